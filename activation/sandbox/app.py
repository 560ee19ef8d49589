"""The sandbox server: one Starlette app mounting every stand-in under its real path layout."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from activation.sandbox import airbyte, crm, hightouch, notifications
from activation.sandbox.context import SandboxContext, SandboxSettings


def build_app(settings: SandboxSettings) -> Starlette:
    context = SandboxContext.create(settings)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "data_dir": str(settings.data_dir)})

    async def reset(request: Request) -> JSONResponse:
        context.reset()
        return JSONResponse({"status": "reset"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        context.shutdown()

    routes = [
        Route("/sandbox/health", health, methods=["GET"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
        *airbyte.routes(context),
        *crm.routes(context),
        *hightouch.routes(context),
        *notifications.routes(context),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.context = context
    return app


def serve(settings: SandboxSettings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(settings), host=host, port=port, log_level="warning")
