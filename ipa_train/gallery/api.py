"""The gallery as a standalone aiohttp server: ``python -m ipa_train.gallery.api ROOT`` serves the routes
(``routes.py``) and the pack's ``web/`` folder without ComfyUI, refusing requests from other web pages
(``security.py``). Tests run the very same handlers this way; in ComfyUI they are registered on its server
(``nodes/gallery.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from aiohttp import web

from .hand_score_jobs import DetectorSource
from .routes import GalleryAPI, RootLike
from .security import origin_middleware

GALLERY_API_KEY = web.AppKey("gallery_api", object)


def create_app(
    root: RootLike, web_dir: Optional[os.PathLike] = None, prefix: str = "/ipa", hand_scoring: Optional[DetectorSource] = None,
    bind_host: str = "127.0.0.1",
) -> web.Application:
    """A standalone aiohttp application with the gallery routes (tests, or curating without ComfyUI running).
    With ``web_dir`` it also serves the pack's ``web/`` folder under ``/web/`` (the gallery page is
    ``/web/gallery/index.html``); ``hand_scoring`` enables the hand score routes. Requests whose ``Origin`` or
    ``Host`` is not this server (``bind_host``) get 403 (``host_origin_problem``), as ComfyUI's own server does."""
    app = web.Application(client_max_size=4 * 1024**2, middlewares=[origin_middleware(bind_host)])
    api = GalleryAPI(root, prefix, hand_scoring)
    routes = web.RouteTableDef()
    api.add_routes(routes)
    app.add_routes(routes)
    if web_dir is not None:
        app.add_routes([web.static("/web", str(web_dir))])
    app[GALLERY_API_KEY] = api
    return app


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m ipa_train.gallery.api ROOT``: serve the gallery without ComfyUI."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve the IPA curation gallery over a dataset root, without ComfyUI.")
    parser.add_argument("root", help="the dataset root folder (ComfyUI's output/ipa_datasets)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8189)
    parser.add_argument("--dwpose-dir", help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx, to score hands (e.g. ComfyUI/models/dwpose)")
    args = parser.parse_args(argv)
    web_dir = Path(__file__).resolve().parents[2] / "web"
    hand_scoring = None
    if args.dwpose_dir:
        from .hand_score_jobs import dwpose_source

        hand_scoring = dwpose_source(lambda: [args.dwpose_dir], lambda: args.dwpose_dir)
    print(f"IPA gallery: http://{args.host}:{args.port}/web/gallery/index.html")
    web.run_app(create_app(args.root, web_dir, hand_scoring=hand_scoring, bind_host=args.host), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
