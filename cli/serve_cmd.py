"""``mindsearch serve``: one warm engine behind HTTP (JSON API, thumbnails, a web page, metrics)."""

from __future__ import annotations

import click

from mindsearch.cli.common import say


@click.command()
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Index root: a folder or s3://bucket/prefix (default: the saved one, else "
                   "$MINDSEARCH_HOME/indexes).")
@click.option("--run", "runs", multiple=True, type=click.Path(file_okay=False),
              help="A run to serve (repeatable; default: the saved run).")
@click.option("--data", type=click.Path(), default=None, help="Dataset whose trials the page offers.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback exposes the service to the network.")
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--token", envvar="MINDSEARCH_TOKEN", default=None,
              help="Bearer token clients must send (default: a new random one, printed once).")
@click.option("--model", default=None, help="open_clip model that encodes uploaded images (brain retrieval).")
@click.option("--weights", default=None, help="Weights of --model.")
@click.option("--max-body-mb", type=float, default=64, show_default=True, help="Largest request body accepted.")
@click.option("--no-register", is_flag=True,
              help="Do not record this service in config.toml (then `mindsearch query` stays in-process).")
def serve(root, runs, data, host, port, token, model, weights, max_body_mb, no_register):
    """Serve queries over HTTP from one long-lived engine; the web page is at /.

    Every route but / and /healthz needs `Authorization: Bearer TOKEN`. While it runs, the
    service is recorded in config.toml and `mindsearch query` uses it.
    """
    import secrets

    from mindsearch import config
    from mindsearch.errors import MindsearchError

    from mindsearch.errors import require

    uvicorn = require("uvicorn", "serve", "`mindsearch serve`")
    from mindsearch.service.app import create_app
    from mindsearch.service.backend import Backend

    backend = Backend(root, runs=runs, data=data, image_model=model, image_weights=weights)
    from mindsearch.indexes.remote import is_remote

    if not is_remote(backend.root) and not backend.root.is_dir():
        raise MindsearchError("index root not found; give it with --root DIR or set MINDSEARCH_HOME "
                              "(or save one with `mindsearch use --root`)", backend.root)
    backend.warm()
    token = token or secrets.token_urlsafe(24)
    app = create_app(backend, token, max_body=int(max_body_mb * (1 << 20)))
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    say(f"serving {len(backend.engine.list())} index(es) under {backend.root}, runs: "
        f"{', '.join(backend.runs) or 'none'}; dataset: {backend.data or 'none'}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: bound to {host}: reachable from the network (the token is the only guard)")
    # The one time the token is shown (stdout, so a script can read it).
    click.echo(f"{url}/  token: {token}", err=False)
    click.echo(f"open {url}/#token={token}")
    registered = False
    if not no_register:
        config.save({}, service={"url": url, "token": token})
        registered = True
        say(f"recorded in {config.config_path()}: `mindsearch query` goes through this service while it runs")
    try:
        server.run()
    finally:
        if registered and (config.load(env=False).get("service") or {}).get("url") == url:
            config.save({}, service=None)
        backend.close()
