"""A controller without a task database (``--nodb``): results still reach the
client that submitted the task; every history request fails with one clear
NoTaskHistory, whether the client checks first or the controller refuses."""

from __future__ import annotations

import pytest

from cluster_launcher.error import NoTaskHistory

pytestmark = pytest.mark.timeout(60)

WHY = r"the controller runs without a task database \(--nodb.*c\.Controller\.db_class = 'DictDB'"


def test_history_requests_fail_clearly_without_a_task_db(make_cluster):
    cluster = make_cluster(n=1, controller_args=("--nodb",))
    client = cluster.client()
    other = cluster.client()
    try:
        assert client.task_history is False
        lview = client.load_balanced_view()
        ar = lview.apply_async(pow, 2, 10)
        assert ar.get(10) == 1024  # work runs and comes back as usual
        assert client.get_result(ar.msg_id).get(10) == 1024  # this client's own result, kept here

        # Checked by the client from connect_reply, before anything is sent.
        with pytest.raises(NoTaskHistory, match=WHY):
            client.db_query({"msg_id": ar.msg_id})
        with pytest.raises(NoTaskHistory, match="hub_history: " + WHY):
            client.hub_history()
        with pytest.raises(NoTaskHistory, match="resubmit: " + WHY):
            client.resubmit(ar)
        with pytest.raises(NoTaskHistory, match="result_status: " + WHY):
            client.result_status(["not-a-task-of-this-client"])
        assert client.result_status([ar]) == {"pending": [], "completed": [ar.msg_id]}  # known here: no DB needed

        # A task another client submitted: only the controller could answer, and it has no record.
        with pytest.raises(NoTaskHistory, match=f"get_result of task {ar.msg_id}: " + WHY):
            other.get_result(ar.msg_id).get(10)

        # A client that does not look at connect_reply (an older one) is refused by the controller.
        other.task_history = True
        with pytest.raises(NoTaskHistory, match="db_query: " + WHY):
            other.db_query({})
        with pytest.raises(NoTaskHistory, match="hub_history: " + WHY):
            other.hub_history()
        with pytest.raises(NoTaskHistory, match="resubmit: " + WHY):
            other.resubmit(ar.msg_id)
        assert other.queue_status()["unassigned"] == 0  # the controller goes on answering
    finally:
        other.close()
        client.close()
