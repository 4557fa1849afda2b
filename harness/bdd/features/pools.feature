Feature: Pool drain and reload
  An operator reloads a pool's model atomically and drains a pool out of service.

  @POOL-1020
  Scenario: Reloading a pool with its model bumps its generation
    Given a tenant of its own
    When the operator reloads the single-slot pool with its own model
    Then the reload succeeds with a generation one higher
    And a task pinned to the single-slot pool still completes

  @POOL-1025
  Scenario: Reloading to a model nobody can load changes nothing
    Given a tenant of its own
    When the operator reloads the single-slot pool with model "conform-no-such-model"
    Then the reload fails and the pool keeps its model and generation

  @POOL-1015 @SCH-1013 @SCH-1015
  Scenario: Draining a pool stops placement on it
    Given a tenant of its own
    When the operator drains pool "pool-b"
    Then pool "pool-b" reports draining
    And a task pinned to pool "pool-b" is refused with 503 POOL_UNREADY

  @POOL-1001
  Scenario: The pools list describes every pool the target announces
    Given a tenant of its own
    When the tenant lists the pools
    Then every pool of the capabilities is listed with its fields and replicas
