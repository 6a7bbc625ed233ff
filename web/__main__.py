"""`python -m web`: start the app (see web/config.py for the flags and OMNIPATH_* variables)."""

from __future__ import annotations

import logging
import sys

from omnipath.errors import OmniPathError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from web.config import load_config

    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
        import uvicorn

        from web.app import create_app

        app = create_app(config)
    except OmniPathError as exc:
        print(f"OmniPath could not start: {exc.message}", file=sys.stderr)
        return 2
    print(f"OmniPath: open http://{config.host}:{config.port} in a browser", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
