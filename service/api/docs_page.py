"""The /schema docs page without internet: Swagger UI's files served by MiniVault itself.

They come from the `swagger-ui-bundle` package (Swagger UI's release files, Apache-2.0 licence).
"""

from __future__ import annotations

from types import SimpleNamespace

from litestar.openapi.plugins import (
    JsonRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/schema/assets"

_SWAGGER = SwaggerRenderPlugin(
    path=["/", "/swagger"],
    js_url=f"{ASSETS}/swagger-ui-bundle.js",
    css_url=f"{ASSETS}/swagger-ui.css",
    standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
    favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
)

OPENAPI_RENDER = SimpleNamespace(
    plugins=[_SWAGGER, JsonRenderPlugin(), YamlRenderPlugin()],
    handlers=[create_static_files_router(path=ASSETS, directories=[swagger_ui_path], include_in_schema=False)],
)
