"""The ``ccl-cache`` command line (installed as the package ``ccl_cache_cli``).

Each command lives in its own module and only parses options and calls the library.
"""
