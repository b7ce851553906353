"""A loop that runs on the event loop beside the store until the server stops (the sealer, the recycler)."""

from __future__ import annotations

import asyncio


class Background:
    name = "background"
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        raise NotImplementedError
