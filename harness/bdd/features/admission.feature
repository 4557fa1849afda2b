Feature: Admission and backpressure
  A client submits tasks; the orchestrator accepts what it can queue and pushes back when full.

  @ADM-1001 @ADM-1002 @ADM-1004
  Scenario: A valid task is accepted
    Given a tenant of its own
    When the tenant submits a task of 4 tokens
    Then the answer is 202 with a task id and a Location header
    And the task can be read back in a state at least queued

  @QUE-1011 @ERR-1019 @ERR-1021
  Scenario: A full queue pushes back
    Given a tenant of its own
    And the single-slot pool is busy with a long task
    When the tenant fills the queue behind it
    Then the next submit is answered 429 with Retry-After and X-Backoff-Ms
    And every accepted task is still queued
