"""Usage and budgets: per-run usage, rollups that add up, refusals and crossings.

The dev model's directives fix what each run produces ([[tokens=N]] content tokens,
[[reasoning=N]] reasoning tokens), so output counts are known exactly; input counts are
whatever the worker reported in the run's usage events, and every rollup must add up to them.
"""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import UTC, datetime

import grpc
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from google.protobuf.field_mask_pb2 import FieldMask

from tests.harness import Client, Stack, expect_error, start_stack
from tests.integration.helpers import get_run, new_run, new_session

Totals = Counter[str]

_KINDS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_input_tokens", "cost_micros")


def _totals(usage: run_pb2.Usage) -> Totals:
    return Counter({kind: getattr(usage, kind) for kind in _KINDS})


def _usage_stub(client: Client) -> usage_service_pb2_grpc.UsageServiceAsyncStub:
    return usage_service_pb2_grpc.UsageServiceStub(client.channel)


def _workspaces(client: Client) -> workspace_service_pb2_grpc.WorkspaceServiceAsyncStub:
    return workspace_service_pb2_grpc.WorkspaceServiceStub(client.channel)


async def _query(
    client: Client,
    *group_by: usage_service_pb2.UsageDimension.ValueType,
    session: str = "",
    api_key: str = "",
) -> list[usage_service_pb2.UsageGroup]:
    response = await _usage_stub(client).QueryUsage(
        usage_service_pb2.QueryUsageRequest(group_by=group_by, session=session, api_key=api_key),
        metadata=client.auth,
        timeout=10,
    )
    return list(response.groups)


async def _second_key(stack: Stack, owner: Client) -> tuple[Client, str]:
    """Make another key for the owner in the same workspace: a client and the key's name."""
    made = await api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel).CreateApiKey(
        api_key_service_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(display_name="ci")),
        metadata=owner.auth,
        timeout=10,
    )
    return stack.client(made.key, owner.workspace), made.api_key.name


async def _key_name(client: Client) -> str:
    listed = await api_key_service_pb2_grpc.ApiKeyServiceStub(client.channel).ListApiKeys(
        api_key_service_pb2.ListApiKeysRequest(), metadata=client.auth, timeout=10
    )
    return next(k.name for k in listed.api_keys if client.api_key.startswith(k.prefix))


async def _set_budget(
    client: Client, *, monthly_token_limit: int = 0, monthly_cost_limit_micros: int = 0
) -> workspace_pb2.Workspace:
    budget = workspace_pb2.Budget(
        monthly_token_limit=monthly_token_limit,
        monthly_cost_limit_micros=monthly_cost_limit_micros,
    )
    return await _workspaces(client).UpdateWorkspace(
        workspace_service_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(name=client.workspace, budget=budget),
            update_mask=FieldMask(paths=["budget"]),
        ),
        metadata=client.auth,
        timeout=10,
    )


async def _finished(
    client: Client, session: str, text: str
) -> tuple[run_pb2.Run, list[run_pb2.RunEvent]]:
    run = await new_run(client, session, text)
    events = await client.stream(run.name)
    return await get_run(client, run.name), events


async def test_run_usage_is_recorded_and_rollups_add_up_across_runs_keys_and_sessions(
    database: str,
) -> None:
    """Each run's usage is its usage events' sum; every grouping sums to the same totals."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        ci, ci_key = await _second_key(stack, owner)
        owner_key = await _key_name(owner)
        plan = [
            (owner, "[[tokens=3]] [[reasoning=1]] one", 3, 1),
            (owner, "[[tokens=5]] [[reasoning=0]] two", 5, 0),
            (ci, "[[tokens=7]] [[reasoning=2]] three", 7, 2),
            (ci, "[[tokens=2]] four", 2, 3),
        ]
        sessions = [await new_session(owner, "a"), await new_session(owner, "b")]
        by_session: dict[str, Totals] = {s.name: Counter() for s in sessions}
        by_key: dict[str, Totals] = {owner_key: Counter(), ci_key: Counter()}
        total: Totals = Counter()
        for i, (client, text, content, reasoning) in enumerate(plan):
            session = sessions[i % 2].name
            run, events = await _finished(client, session, text)
            assert run.state == run_pb2.Run.COMPLETED, run.error_message
            reported: Totals = Counter()
            for e in events:
                if e.WhichOneof("payload") == "usage":
                    reported += _totals(e.usage)
            assert _totals(run.usage) == reported
            assert run.usage.output_tokens == content + reasoning
            assert run.usage.reasoning_tokens == reasoning
            assert run.usage.input_tokens > 0
            assert run.time_to_first_token.ToTimedelta() <= (
                run.end_time.ToDatetime() - run.create_time.ToDatetime()
            )
            assert run.HasField("model_latency")
            by_session[session] += _totals(run.usage)
            key = owner_key if client is owner else ci_key
            by_key[key] += _totals(run.usage)
            total += _totals(run.usage)

        (whole,) = await _query(owner)
        assert whole.run_count == len(plan)
        assert _totals(whole.usage) == total
        assert whole.mean_time_to_first_token.ToTimedelta().total_seconds() > 0

        groups = await _query(owner, usage_service_pb2.SESSION)
        assert {g.session: _totals(g.usage) for g in groups} == by_session
        groups = await _query(owner, usage_service_pb2.API_KEY)
        assert {g.api_key: _totals(g.usage) for g in groups} == by_key
        groups = await _query(owner, usage_service_pb2.DAY, usage_service_pb2.MODEL)
        assert [(g.day, g.model) for g in groups] == [
            (datetime.now(UTC).date().isoformat(), "ap-dev-model")
        ]
        assert _totals(groups[0].usage) == total

        (one,) = await _query(owner, session=sessions[1].name)
        assert _totals(one.usage) == by_session[sessions[1].name]
        (mine,) = await _query(owner, api_key=ci_key)
        assert _totals(mine.usage) == by_key[ci_key]

        workspace = await _workspaces(owner).GetWorkspace(
            workspace_service_pb2.GetWorkspaceRequest(name=owner.workspace),
            metadata=owner.auth,
            timeout=10,
        )
        assert workspace.budget.month_tokens == total["input_tokens"] + total["output_tokens"]
        assert workspace.budget.monthly_token_limit == 0

        # Another workspace sees none of it, even when it names this workspace's session.
        other = await stack.new_workspace("Elsewhere")
        assert await _query(other) == []
        assert await _query(other, session=sessions[0].name) == []


async def test_a_run_past_the_budget_is_refused_at_create(database: str) -> None:
    """At the monthly token limit, CreateRun is RESOURCE_EXHAUSTED / BUDGET_EXCEEDED."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        session = await new_session(owner)
        run, _ = await _finished(owner, session.name, "[[tokens=4]] [[reasoning=0]] hi")
        used = run.usage.input_tokens + run.usage.output_tokens
        # A limit above the month's total admits the next run; at it, refuses.
        workspace = await _set_budget(owner, monthly_token_limit=used + 1)
        assert workspace.budget.month_tokens == used
        assert workspace.budget.monthly_token_limit == used + 1
        await _set_budget(owner, monthly_token_limit=used)
        info = await expect_error(
            new_run(owner, session.name, "more"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
        )
        assert info.metadata["budget"] == owner.workspace
        assert info.metadata["limit"] == "tokens"
        assert info.metadata["limit_value"] == str(used)
        assert info.metadata["used"] == str(used)
        # Nothing was stored, and lifting the limit lets runs start again.
        runs = await owner.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=session.name), metadata=owner.auth, timeout=10
        )
        assert len(runs.runs) == 1
        await _set_budget(owner)
        run, _ = await _finished(owner, session.name, "[[tokens=1]] again")
        assert run.state == run_pb2.Run.COMPLETED


async def test_a_run_that_crosses_the_budget_fails_after_its_model_call(database: str) -> None:
    """A run whose usage goes past what was left ends run.failed / BUDGET_EXCEEDED, counted."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        session = await new_session(owner)
        await _set_budget(owner, monthly_token_limit=10)
        run, events = await _finished(owner, session.name, "[[tokens=20]] [[reasoning=0]] long")
        types = [e.type for e in events]
        # The model call finished (all its text and its usage are stored), then the run failed.
        assert types.count("output_text.delta") == 20
        assert types[-2:] == ["usage", "run.failed"]
        assert events[-1].run_failed.reason == "BUDGET_EXCEEDED"
        assert owner.workspace in events[-1].run_failed.message
        assert run.state == run_pb2.Run.FAILED
        assert run.error_reason == "BUDGET_EXCEEDED"
        used = run.usage.input_tokens + run.usage.output_tokens
        assert run.usage.output_tokens == 20

        (whole,) = await _query(owner)
        assert whole.run_count == 1 and _totals(whole.usage) == _totals(run.usage)
        info = await expect_error(
            new_run(owner, session.name, "more"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
        )
        assert info.metadata["used"] == str(used)


async def test_budgets_and_usage_queries_refuse_bad_input(database: str) -> None:
    """A negative limit and a backwards range are INVALID_ARGUMENT naming the field."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        info = await expect_error(
            _set_budget(owner, monthly_token_limit=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        request = usage_service_pb2.QueryUsageRequest()
        request.start_time.FromDatetime(datetime(2026, 2, 1, tzinfo=UTC))
        request.end_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
        await expect_error(
            _usage_stub(owner).QueryUsage(request, metadata=owner.auth, timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert info.reason == "INVALID_ARGUMENT"
        # Times outside Timestamp's range (before year 1, or negative nanos) are the caller's
        # mistake, not a crash in the conversion.
        for seconds, nanos in ((-(10**12), 0), (0, -1)):
            out_of_range = usage_service_pb2.QueryUsageRequest()
            out_of_range.start_time.seconds, out_of_range.start_time.nanos = seconds, nanos
            bad = await expect_error(
                _usage_stub(owner).QueryUsage(out_of_range, metadata=owner.auth, timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ARGUMENT",
            )
            assert bad.metadata["field"] == "start_time"


async def test_a_key_budget_caps_the_runs_that_key_creates(database: str) -> None:
    """A key past its budget fails its crossing run and is refused; other keys run on."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        ci, ci_key = await _second_key(stack, owner)
        keys = api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel)
        updated = await keys.UpdateApiKey(
            api_key_service_pb2.UpdateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(
                    name=ci_key, budget=workspace_pb2.Budget(monthly_token_limit=10)
                ),
                update_mask=FieldMask(paths=["budget.monthly_token_limit"]),
            ),
            metadata=owner.auth,
            timeout=10,
        )
        assert updated.budget.monthly_token_limit == 10 and updated.budget.month_tokens == 0
        session = await new_session(owner)
        run, events = await _finished(ci, session.name, "[[tokens=20]] [[reasoning=0]] long")
        assert run.error_reason == "BUDGET_EXCEEDED"
        assert ci_key in events[-1].run_failed.message
        info = await expect_error(
            new_run(ci, session.name, "more"), grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED"
        )
        assert info.metadata["budget"] == ci_key
        # The workspace has no budget, so the owner's key runs on.
        other, _ = await _finished(owner, session.name, "[[tokens=2]] fine")
        assert other.state == run_pb2.Run.COMPLETED
        listed = await keys.ListApiKeys(
            api_key_service_pb2.ListApiKeysRequest(), metadata=owner.auth, timeout=10
        )
        by_name = {k.name: k.budget for k in listed.api_keys}
        assert by_name[ci_key].month_tokens == run.usage.input_tokens + run.usage.output_tokens
        assert by_name[ci_key].monthly_token_limit == 10

        await expect_error(
            keys.UpdateApiKey(
                api_key_service_pb2.UpdateApiKeyRequest(
                    api_key=api_key_pb2.ApiKey(name=ci_key, display_name="x"),
                    update_mask=FieldMask(paths=["display_name"]),
                ),
                metadata=owner.auth,
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        elsewhere = await stack.new_workspace("Elsewhere")
        await expect_error(
            api_key_service_pb2_grpc.ApiKeyServiceStub(elsewhere.channel).UpdateApiKey(
                api_key_service_pb2.UpdateApiKeyRequest(
                    api_key=api_key_pb2.ApiKey(name=ci_key),
                    update_mask=FieldMask(paths=["budget"]),
                ),
                metadata=elsewhere.auth,
                timeout=10,
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        )


async def test_a_cost_budget_counts_the_configured_prices(database: str) -> None:
    """With prices set, usage carries cost; a cost limit stops and then refuses runs."""
    prices = {"price_input": 2.0, "price_cached_input": 0.5, "price_output": 8.0}
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), model_settings=prices
    ) as stack:
        owner = stack.owner
        session = await new_session(owner)
        await _set_budget(owner, monthly_cost_limit_micros=1)
        run, events = await _finished(owner, session.name, "[[tokens=20]] [[reasoning=0]] pricey")
        assert run.usage.cost_micros > 1
        assert events[-1].run_failed.reason == "BUDGET_EXCEEDED"
        assert "micro-USD" in events[-1].run_failed.message
        (whole,) = await _query(owner)
        assert whole.usage.cost_micros == run.usage.cost_micros
        info = await expect_error(
            new_run(owner, session.name, "more"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
        )
        assert info.metadata["limit"] == "cost_micros"
        assert info.metadata["used"] == str(run.usage.cost_micros)


async def test_usage_by_api_key_is_for_owners(database: str) -> None:
    """A member queries usage by session but not by key: PERMISSION_DENIED naming owner."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16)) as stack:
        owner = stack.owner
        member = await _workspaces(owner).CreateMember(
            workspace_service_pb2.CreateMemberRequest(
                member=workspace_pb2.Member(role="member", display_name="Grace")
            ),
            metadata=owner.auth,
            timeout=10,
        )
        made = await api_key_service_pb2_grpc.ApiKeyServiceStub(owner.channel).CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name="grace", user=member.user)
            ),
            metadata=owner.auth,
            timeout=10,
        )
        grace = stack.client(made.key, owner.workspace)
        session = await new_session(grace)
        await _finished(grace, session.name, "[[tokens=2]] hi")
        (mine,) = await _query(grace, usage_service_pb2.SESSION)
        assert mine.session == session.name and mine.run_count == 1
        for call in (
            _query(grace, usage_service_pb2.API_KEY),
            _query(grace, api_key=made.api_key.name),
        ):
            info = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert info.metadata["required_role"] == "owner"
        (by_key,) = await _query(owner, usage_service_pb2.API_KEY)
        assert by_key.api_key == made.api_key.name
