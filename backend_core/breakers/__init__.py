"""Circuit breakers: ``core`` (the pure state machine), ``store`` (BreakerStore),
``breaker`` (CircuitBreaker, the permit API the app uses) and ``registry`` (the process's
breakers, built from Settings)."""
