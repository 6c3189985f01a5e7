"""Typed configuration: one pydantic tree per job, YAML presets packaged with the code, dotted overrides.

``base`` holds what every job shares (the strict model, path types, actor/tracking/Ray settings and the loader);
each job's schema has its own module (``sampling``, ``curate``, ``train``, ``evaluate``, ``serve``, ``demo``), and
``presets`` maps a packaged preset to its schema. Import from the module that defines a name.
"""
