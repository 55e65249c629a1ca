"""/v1/limits, the per-key rate limiter and the per-tenant quotas at campaign creation."""
