"""The blocking client, for scripts: the same API without ``await``.

Runs a flow to completion, then reads its events back (a watch of a finished flow yields its
snapshot and ends). FLOWSTATE_ADDRESS and FLOWSTATE_TOKEN configure the client.

    python blocking.py
"""

from flowstate.client import FlowstateClient, FlowStatus

PHASES = [
    "data_import",
    "field_mapping",
    "data_cleansing",
    "asset_inventory",
    "dependency_analysis",
]

with FlowstateClient() as client:
    flow = client.create_flow().flow
    for phase in PHASES:
        client.transition_phase(flow.flow_id, phase, "IN_PROGRESS")
        client.transition_phase(flow.flow_id, phase, "COMPLETED")
    for event in client.watch(flow.flow_id):  # ends after the terminal event
        print(event.flow_version, event.status.name)
    assert client.get_flow(flow.flow_id).status is FlowStatus.COMPLETED
