"""Stage entry points (``python -m stages.<name>``).

Importing the package sizes the CPU thread pool before any stage imports torch (see pipeline.threads).
"""

from pipeline.threads import configure_threads

configure_threads()
