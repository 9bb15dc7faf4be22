"""Provider adapters: one interface (see ``base``) over each provider's batch and sync APIs."""
