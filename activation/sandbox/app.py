"""The sandbox server: one Starlette app mounting every stand-in under its real path layout."""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from activation.lib.environment import SANDBOX_AIRBYTE_CONNECTION_ID
from activation.sandbox import (
    airbyte,
    crm,
    fault_http,
    fault_specs,
    faults,
    hightouch,
    notifications,
    traffic,
)
from activation.sandbox.context import SandboxContext, SandboxSettings


def build_app(settings: SandboxSettings) -> Starlette:
    context = SandboxContext.create(settings)
    request_counts = traffic.RequestCounts()
    # One list of syncs for the stand-in and the fault targets, staging twins included.
    syncs = hightouch.served_sync_definitions(context.destinations)
    fault_registry = faults.FaultRegistry(
        fault_specs.Targets(
            syncs={s.id: s.slug for s in syncs},
            destination_types=tuple(sorted(crm.batch_limits())),
            connection_ids=(SANDBOX_AIRBYTE_CONNECTION_ID,),
        )
    )
    context.on_reset(fault_registry.clear)
    context.on_reset(request_counts.clear)

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
        *faults.routes(fault_registry),
        *traffic.routes(request_counts),
        *airbyte.routes(context, faults=fault_registry),
        *crm.routes(context),
        *hightouch.routes(context, syncs, faults=fault_registry),
        *notifications.routes(context),
    ]
    # The counter sees every request first, faulted ones included; faults apply before routing.
    middleware = [
        Middleware(traffic.RequestCounter, counts=request_counts),
        Middleware(fault_http.FaultMiddleware, registry=fault_registry),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.context = context
    return app


def serve(settings: SandboxSettings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(settings), host=host, port=port, log_level="warning")
