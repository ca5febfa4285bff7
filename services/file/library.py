"""The file service's files: shares and metadata kept together, limits, repairs and scrubbing.

Share I/O blocks, so it runs in worker threads. A file exists once its shares
are all in place and its metadata row is written; every way an upload can end
early (refused, failed, cancelled) removes what it had stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time

import grpc

from parley.api.v1 import errors_pb2
from services.file.limits import UploadLimits, media_type_essence, size_class
from services.file.metadata import FileMetadataStorage, FileRow, open_file_metadata
from services.file.shares import FileLayout, ScrubReport, ShareReader, SharesLostError, ShareStores
from services.file.uploads import NewFile, UploadSession, too_large
from services.runtime import uncancellable
from services.runtime.config import Config
from services.runtime.errors import ServiceError, invalid_field, permission_denied
from services.runtime.principal import Principal

log = logging.getLogger("parley.file")

FILE_ID = re.compile(r"f-[0-9a-f]{32}")
QUOTA_SETTING = "files.quota_bytes_per_user"
SCRUB_PAGE_ROWS = 100
# Leftovers are swept only once nothing has written them for this long before the scrub began: an upload under
# way publishes its shares a moment before its row, and writes its partial files as it goes.
LEFTOVER_GRACE_SECONDS = 3600.0


def new_file_id() -> str:
    return f"f-{secrets.token_hex(16)}"


def uploader_of(principal: Principal) -> str:
    """A user's id, or "svc:<name>" for a service."""
    return f"svc:{principal.service_name}" if principal.is_service else principal.user_id


def layout_of(row: FileRow) -> FileLayout:
    return FileLayout.from_dict(json.loads(row.layout))


def check_file_id(file_id: str) -> None:
    if not FILE_ID.fullmatch(file_id):
        raise invalid_field("file_id", "is not a file id (f- and 32 lowercase hex digits)")


def file_not_found(file_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, errors_pb2.ERROR_REASON_FILE_NOT_FOUND, f"no file {file_id!r}", file_id=file_id
    )


def file_lost(error: SharesLostError) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.DATA_LOSS,
        errors_pb2.ERROR_REASON_FILE_LOST,
        f"{error}: too many share stores are missing or damaged; restoring them brings it back",
        file_id=error.file_id,
        intact_shares=str(error.intact),
        needed_shares=str(error.needed),
    )


def quota_exceeded(used: int, size: int, quota: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
        f"this upload of {size:,} bytes does not fit the quota: {used:,} of {quota:,} bytes are in use",
        quota=QUOTA_SETTING,
    )


class FileLibrary:
    def __init__(
        self, stores: ShareStores, metadata: FileMetadataStorage, limits: UploadLimits, quota_bytes: int
    ) -> None:
        self.stores = stores
        self.limits = limits
        self.quota_bytes = quota_bytes
        self._metadata = metadata
        # Uploads under way in this process: file id -> (uploader, declared size).
        self._reserved: dict[str, tuple[str, int]] = {}
        self._repairs: dict[str, asyncio.Future[None]] = {}

    async def used_bytes(self, uploader_id: str) -> int:
        return await self._metadata.used_bytes(uploader_id)

    async def begin_upload(self, principal: Principal, declared_type: str, size: int) -> UploadSession:
        """Checks the media type, the size and the quota before any byte arrives."""
        media_type = media_type_essence(declared_type)
        if media_type is None:
            raise invalid_field("start.media_type", f"{declared_type[:100]!r} is not a media type (type/subtype)")
        if not self.limits.allows(media_type):
            raise invalid_field(
                "start.media_type",
                f"files of type {media_type} are not accepted; accepted: {', '.join(self.limits.allowed)}",
            )
        if size < 0:
            raise invalid_field("start.size", "must not be negative")
        cap = self.limits.cap(media_type)
        if size > cap:
            raise too_large(
                f"{size_class(media_type)} files ({media_type}) may hold at most {cap:,} bytes; {size:,} were declared",
                cap,
            )
        file = NewFile(new_file_id(), uploader_of(principal), media_type, size, quota_applies=not principal.is_service)
        self._reserved[file.file_id] = (file.uploader_id, size)
        try:
            if file.quota_applies:
                await self._check_quota(file.uploader_id, size)
            return await UploadSession.open(self.stores, file)
        except BaseException:
            self._reserved.pop(file.file_id, None)
            raise

    async def store(self, session: UploadSession) -> FileRow:
        """Seals the shares and records the file: all or nothing, whenever the caller is cancelled."""
        storing = uncancellable.start(self._store(session))
        try:
            return await asyncio.shield(storing)
        except asyncio.CancelledError:
            # The client left as its file was being stored: it never learns the id, so nothing is kept.
            await uncancellable.uncancellable(self._undo(storing))
            raise

    async def discard(self, session: UploadSession) -> None:
        """Forgets an upload that ended early, whatever it had written."""
        try:
            await uncancellable.uncancellable(session.abort())
        finally:
            self._reserved.pop(session.file.file_id, None)

    async def find(self, file_id: str) -> FileRow:
        check_file_id(file_id)
        row = await self._metadata.get(file_id)
        if row is None:
            raise file_not_found(file_id)
        return row

    async def open_reader(self, row: FileRow, offset: int) -> ShareReader:
        """Opens the file's shares (DATA_LOSS if fewer than k look intact); each block is checked as it is read,
        and the shares not read once the read is done (`check_after_read`)."""
        if not 0 <= offset <= row.size:
            raise invalid_field("offset", f"must be between 0 and the file's size, {row.size}")
        try:
            return await asyncio.to_thread(self.stores.reader, layout_of(row), offset)
        except SharesLostError as error:
            if await self._metadata.get(row.file_id) is None:
                raise file_not_found(row.file_id) from error  # deleted since it was found
            raise file_lost(error) from error

    async def delete(self, file_id: str, principal: Principal) -> None:
        row = await self.find(file_id)
        if not principal.is_service and row.uploader_id != principal.user_id:
            raise permission_denied(
                errors_pb2.ERROR_REASON_NOT_OWNER, "only a file's uploader (or a service) may delete it"
            )
        await uncancellable.uncancellable(self._remove(file_id))

    def check_after_read(self, row: FileRow, reader: ShareReader) -> None:
        """In the background, once a read is done: checks the shares it did not, and rebuilds any damaged.

        One check at a time per file: a read meanwhile leaves its shares to the next read, or to scrub."""
        if row.file_id in self._repairs or not (reader.damaged or reader.unchecked):
            return
        repair = uncancellable.start(self._check_and_repair(row, reader.damaged, reader.unchecked))
        self._repairs[row.file_id] = repair
        repair.add_done_callback(lambda _: self._repairs.pop(row.file_id, None))

    async def scrub(self, *, sweep: bool = False) -> ScrubReport:
        """Checks every file's shares, rebuilds the damaged ones, and says what it found.

        With `sweep`, also removes leftovers (see `_sweep`) unless a file is lost — a store mounted in the
        wrong place holds shares that are not leftovers — or the metadata knows no file at all.
        """
        started = time.time()
        checked = 0
        repaired: dict[str, list[int]] = {}
        lost: list[str] = []
        referenced: set[bytes] = set()
        after = ""
        while rows := await self._metadata.page(after, SCRUB_PAGE_ROWS):
            after = rows[-1].file_id
            layouts = [layout_of(row) for row in rows]
            referenced.update(digest for layout in layouts for digest in layout.share_hashes)
            report = await asyncio.to_thread(self.stores.scrub, layouts)
            checked += report.checked
            repaired.update(report.repaired)
            lost.extend(report.lost)
        if repaired or lost:
            log.warning("scrub found damaged files", extra={"checked": checked, "repaired": repaired, "lost": lost})
        swept, skipped = 0, ""
        if sweep and lost:
            skipped = "a file is lost: check that every share store is mounted where the settings say"
        elif sweep and not checked:
            skipped = "the metadata knows no file: check --data-dir and the storage settings"
        elif sweep:
            swept = await self._sweep(referenced, started - LEFTOVER_GRACE_SECONDS)
        return ScrubReport(checked, repaired, lost, swept, skipped)

    async def _sweep(self, referenced: set[bytes], written_before: float) -> int:
        """Removes what no file refers to and nothing wrote for an hour before the scrub began: shares of an
        upload or a repair cut short by a crash or a racing delete, partial files of uploads that never finished.
        A share whose file (named in its header) has a row now is kept, whatever its hash."""
        swept = 0
        for path, file_id in await asyncio.to_thread(self.stores.leftovers, referenced, written_before):
            if file_id is not None and await self._metadata.get(file_id) is not None:
                continue
            try:
                await asyncio.to_thread(path.unlink)
            except FileNotFoundError:
                continue
            swept += 1
        return swept

    async def close(self) -> None:
        await self._metadata.close()

    async def _check_quota(self, uploader_id: str, size: int) -> None:
        """Stored bytes, and those of this uploader's uploads under way here, leave room for `size`."""
        used = await self._metadata.used_bytes(uploader_id)
        coming = sum(bytes_ for who, bytes_ in self._reserved.values() if who == uploader_id)
        if used + coming > self.quota_bytes:
            raise quota_exceeded(used + coming - size, size, self.quota_bytes)

    async def _store(self, session: UploadSession) -> FileRow:
        try:
            layout, digest = await session.finish()
            file = session.file
            row = FileRow(
                file.file_id,
                file.uploader_id,
                file.media_type,
                layout.size,
                digest,
                json.dumps(layout.to_dict()),
                time.time(),
            )
            quota = self.quota_bytes if file.quota_applies else None
            if not await self._metadata.record(row, quota):
                used = await self._metadata.used_bytes(file.uploader_id)
                raise quota_exceeded(used, row.size, self.quota_bytes)
        except BaseException:
            await session.abort()
            raise
        finally:
            self._reserved.pop(session.file.file_id, None)
        return row

    async def _undo(self, storing: asyncio.Future[FileRow]) -> None:
        try:
            row = await storing
        except Exception:
            return  # it failed, and removed what it had written
        await self._remove(row.file_id)

    async def _remove(self, file_id: str) -> None:
        row = await self._metadata.remove(file_id)
        if row is None:
            raise file_not_found(file_id)
        # A repair under way would otherwise put shares back once they are gone.
        repair = self._repairs.get(file_id)
        if repair is not None:
            await asyncio.wait([repair])
        await asyncio.to_thread(self.stores.delete, layout_of(row))

    async def _check_and_repair(self, row: FileRow, damaged: list[int], unchecked: list[int]) -> None:
        if await self._metadata.get(row.file_id) is None:
            return  # deleted meanwhile
        layout = layout_of(row)
        try:
            if not damaged and not await asyncio.to_thread(self.stores.damaged, layout, unchecked):
                return
            rebuilt = await asyncio.to_thread(self.stores.repair, layout)
        except SharesLostError as error:
            log.error("file lost", extra={"file_id": row.file_id, "error": str(error)})
            return
        except Exception as error:  # a store that cannot be written (unmounted, full): scrub tries again later
            log.warning("could not repair a file's shares", extra={"file_id": row.file_id, "error": repr(error)})
            return
        if rebuilt:
            log.info("repaired shares", extra={"file_id": row.file_id, "shares": rebuilt})


async def open_library(config: Config) -> FileLibrary:
    files = config.files
    # The metadata first: on SQLite it makes the data directory, owner-only, before the stores go in it.
    metadata = await open_file_metadata(config)
    try:
        stores = await asyncio.to_thread(
            ShareStores, files.share_directories(config.server.data_dir), files.data_shares
        )
    except BaseException:
        await metadata.close()
        raise
    return FileLibrary(stores, metadata, UploadLimits.from_config(files), files.quota_bytes_per_user)


async def scrub_files(config: Config, *, sweep: bool = False) -> ScrubReport:
    """Checks and repairs every file of the file service `config` describes (`parley files scrub [--sweep]`)."""
    library = await open_library(config)
    try:
        return await library.scrub(sweep=sweep)
    finally:
        await library.close()
