"""`ap usage` and `ap budget` against a real stack, through the SDK's query_usage."""

from __future__ import annotations

from agentplatform import AsyncClient, BudgetExceeded

from tests.cli.test_commands import Ap, json_lines, workspace

__all__ = ["workspace"]


async def test_usage_and_budget_commands(workspace: tuple[Ap, AsyncClient]) -> None:
    """`ap usage` sums runs by session; `ap budget set` caps the month, and runs are refused."""
    ap, client = workspace
    sessions = [await client.create_session(title=t) for t in ("a", "b")]
    totals: dict[str, int] = {}
    for session, text in zip(sessions, ("[[tokens=3]] one", "[[tokens=5]] two"), strict=True):
        await client.send_message(session.name, text)
        (run,) = [r async for r in client.list_runs(session.name)]
        totals[session.name] = run.usage.output_tokens

    by_session = json_lines((await ap("usage", "--by", "session", "--json")).out)
    assert {g["session"]: int(g["usage"]["outputTokens"]) for g in by_session} == totals
    (whole,) = json_lines((await ap("usage", "--json")).out)
    assert int(whole["runCount"]) == 2
    assert int(whole["usage"]["outputTokens"]) == sum(totals.values())
    table = await ap("usage", "--by", "model,day")
    assert table.code == 0 and "ap-dev-model" in table.out and "MEAN TTFT" in table.out

    used = int(whole["usage"]["inputTokens"]) + int(whole["usage"]["outputTokens"])
    set_ = await ap("budget", "set", "--tokens", str(used), "--cost", "2.5", "--json")
    (budget,) = json_lines(set_.out)
    assert set_.code == 0
    assert budget["monthlyTokenLimit"] == str(used) and budget["monthTokens"] == str(used)
    assert budget["monthlyCostLimitMicros"] == "2500000"
    shown = await ap("budget", "show")
    assert f"{used} used of {used}" in shown.out and "$2.5" in shown.out
    try:
        await client.create_run(sessions[0].name, "refused")
    except BudgetExceeded as err:
        assert err.budget == budget_workspace(shown.out)
    else:
        raise AssertionError("a run past the budget was created")
    # Lifting the token limit alone keeps the cost limit.
    (lifted,) = json_lines((await ap("budget", "set", "--tokens", "0", "--json")).out)
    assert "monthlyTokenLimit" not in lifted and lifted["monthlyCostLimitMicros"] == "2500000"
    refused = await ap("budget", "set")
    assert refused.code == 2 and "--tokens" in refused.err
    (key,) = json_lines((await ap("keys", "list", "--json")).out)
    (capped,) = json_lines(
        (await ap("budget", "set-key", key["name"], "--tokens", "7", "--json")).out
    )
    assert capped["budget"]["monthlyTokenLimit"] == "7"
    assert capped["budget"]["monthTokens"] == str(used)


def budget_workspace(shown: str) -> str:
    """Return the workspace `ap budget show` names on its first line."""
    return shown.split()[2]
