"""eventq's development tools, kept out of the runtime package ``eventq``.

* :mod:`eventq_dev.devstack` - the local Kafka + PostgreSQL stack (``eventq dev ...``).
* :mod:`eventq_dev.demo` - the README demo (``eventq demo``) and its event schemas.
* :mod:`eventq_dev.cli` - the ``eventq`` commands above, which :mod:`eventq.cli` adds when
  this package is importable.

Nothing in ``eventq`` imports this package except that guarded registration, and no
production schema registry sees the demo's schemas unless it lists
:data:`eventq_dev.demo.SCHEMAS` as a source.
"""
