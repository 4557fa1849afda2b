Feature: Sessions
  A client groups tasks in a session with a turn limit.

  @ADM-1028 @ADM-1030 @ADM-1031
  Scenario: A session counts turns and refuses one too many
    Given a tenant of its own
    And a session with 2 turns
    When the tenant submits 2 tasks in the session
    Then the session reports 2 turns used
    And another submit in the session is answered 409 SESSION_EXPIRED

  @ADM-1036
  Scenario: Another tenant cannot use the session
    Given a tenant of its own
    And a session with 2 turns
    Then another tenant can neither read, use nor delete the session
