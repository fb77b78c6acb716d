-- Monthly limits of an API key on the runs it creates; NULL means none. Tokens count input
-- plus output, as for a workspace's (0008).
ALTER TABLE api_keys ADD COLUMN budget_monthly_tokens bigint;
ALTER TABLE api_keys ADD COLUMN budget_monthly_cost_micros bigint;
