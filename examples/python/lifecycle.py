"""The lifecycle of a flow, as an orchestrator drives it, with the asyncio client.

create -> start a phase -> report progress -> complete it; fail a phase -> retry -> complete;
watch every change meanwhile. Settings come from the environment: FLOWSTATE_ADDRESS (default
127.0.0.1:50051) and FLOWSTATE_TOKEN (mint one with `flowstate token`).

    python lifecycle.py
"""

import asyncio

from flowstate.client import (
    AsyncFlowstateClient,
    ErrorCode,
    FlowStatus,
    PhaseOrderViolation,
    PhaseState,
)

PHASES = [
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
]


async def main() -> None:
    async with AsyncFlowstateClient() as client:  # FLOWSTATE_ADDRESS, FLOWSTATE_TOKEN
        flow = (await client.create_flow("discovery", display_name="example")).flow
        flow_id = flow.flow_id
        print("created", flow_id, flow.status.name)

        async def follow() -> list[FlowStatus]:  # every change, in order; resumes by itself
            statuses = []
            async for event in client.watch(flow_id):
                print(f"  v{event.flow_version} {event.status.name} {event.progress:.0f}%")
                statuses.append(event.status)
            return statuses  # the stream ends after the terminal event

        watcher = asyncio.create_task(follow())

        try:  # a refusal is an exception carrying the server's structured error
            await client.transition_phase(flow_id, "field_mapping", PhaseState.IN_PROGRESS)
        except PhaseOrderViolation as error:
            print("refused:", error.code.name, "blocked by", error.blocking_phases)

        for phase in PHASES:
            await client.transition_phase(flow_id, phase, PhaseState.IN_PROGRESS)
            await client.update_phase_progress(flow_id, phase, 0.5)
            if phase == "field_mapping":  # the agent failed: report it, then retry the phase
                await client.transition_phase(
                    flow_id,
                    phase,
                    PhaseState.FAILED,
                    error_code=ErrorCode.AGENT_TIMEOUT,
                    error_message="the mapping agent did not answer",
                )
                await client.retry(flow_id, phase)  # FAILED -> RETRY_NEEDED
                await client.retry(flow_id, phase)  # RETRY_NEEDED -> IN_PROGRESS
            result = await client.transition_phase(flow_id, phase, PhaseState.COMPLETED)

        assert result.flow.status is FlowStatus.COMPLETED
        statuses = await watcher
        assert statuses[-1] is FlowStatus.COMPLETED

        async for entry in client.iter_flow_history(flow_id):  # pages are fetched lazily
            to_state = entry.to_state.name if entry.to_state is not None else ""
            print(entry.flow_version, entry.kind.name, entry.phase or "", to_state)


if __name__ == "__main__":
    asyncio.run(main())
