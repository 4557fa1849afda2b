Feature: Identity and tenant isolation
  Without auth configured, the tenant header names the caller; tenants never see each other's tasks.

  @ADM-1019 @ADM-1020 @ADM-1022
  Scenario: Tenants see only their own tasks
    Given a tenant of its own
    When the tenant submits a task of 2 tokens
    Then the task reports the tenant
    And another tenant neither lists nor reads the task
