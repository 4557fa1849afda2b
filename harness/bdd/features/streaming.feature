Feature: Streaming
  A client follows a task's events until its one terminal event.

  @STR-1001 @STR-1002 @STR-1005 @STR-1006
  Scenario Outline: A task streams its tokens to the end
    Given a tenant of its own
    When the tenant submits a task of <n> tokens
    And the tenant follows its events over SSE
    Then the stream is well formed and ends with an end event counting <n> tokens

    Examples:
      | n  |
      | 1  |
      | 7  |
