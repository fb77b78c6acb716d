"""The whole platform on one machine: ``python -m devtools.stack run|migrate|clean``.

One module per job; `run` composes them:

    layout      where a stack keeps its files (var/) and which ports it takes
    settings    what `run` reads from the environment, and the services it starts
    database    the administrative database: AP_DATABASE_URL or the embedded Postgres
    owner       the first workspace's owner key and the client config file `ap` reads
    rundir      the live stack's lock, so others can tell it runs
    replicas    worker.env, web.env: what an extra worker or HTTP edge needs to join
    banner      what is printed once the stack is up
    run         start everything, supervise it, stop it in order
    clean       what `make clean` does before it deletes var/

Child processes are started, followed and stopped by `devtools.processes`, the one
supervisor the fault tests use too. `layout`, `rundir` and `clean` need only the standard
library, so `make clean` works even after the virtualenv is gone.
"""
