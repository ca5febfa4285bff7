"""The history service: servicer and module."""

from __future__ import annotations

from parley.history.v1 import history_pb2, history_pb2_grpc
from services.history import store
from services.runtime.config import Config
from services.runtime.errors import invalid_field
from services.runtime.grpc_types import Context
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.sqlite import SqliteDatabase
from services.runtime.telemetry import Telemetry
from services.runtime.timestamps import to_timestamp

SERVICE = history_pb2.DESCRIPTOR.services_by_name["HistoryService"]
MAX_ROOM_ID = 128


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def GetLogState(
        self, request: history_pb2.GetLogStateRequest, context: Context
    ) -> history_pb2.GetLogStateResponse:
        if not request.room_id:
            raise invalid_field("room_id", "is required")
        if len(request.room_id) > MAX_ROOM_ID:
            raise invalid_field("room_id", f"must be at most {MAX_ROOM_ID} characters")
        row = await self._db.run(lambda db: store.log_state(db, request.room_id))
        if row is None:
            return history_pb2.GetLogStateResponse(state=history_pb2.LogState(room_id=request.room_id))
        return history_pb2.GetLogStateResponse(
            state=history_pb2.LogState(
                room_id=row.room_id, epoch=row.epoch, last_seq=row.last_seq, create_time=to_timestamp(row.created_at)
            )
        )


async def history_module(config: Config) -> ServiceModule:
    db = SqliteDatabase(config.server.data_dir / "history.sqlite3", store.MIGRATIONS)
    await db.open()
    servicer = HistoryServicer(db)
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: history_pb2_grpc.add_HistoryServiceServicer_to_server(servicer, server),
        close=db.close,
    )


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The history service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [history_module], process_name="history", identity_address=config.peers.identity, telemetry=telemetry
    )
