Feature: Cancel
  A client cancels a task; once the answer arrives no token follows.

  @STR-1028 @STR-1029
  Scenario: Cancelling a running task stops its tokens
    Given a tenant of its own
    When the tenant submits a long task and it starts streaming
    And the tenant cancels it
    Then the stream ends with a cancelled event of reason client

  @QUE-1017
  Scenario: Cancelling a queued task
    Given a tenant of its own
    And the single-slot pool is busy with a long task
    When the tenant queues a task behind it and cancels it
    Then that task's stream is queued then cancelled and it never started
