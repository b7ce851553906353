"""Access control: the policy (who may do what), the gate every call passes, quotas and the audit trail."""

from tandem.server.access.gate import (CALLER, Call, Denied, Gate, cert_identities, grants, grpc_identities,
                                       readable)
from tandem.server.access.policy import PolicyError
from tandem.server.access.rules import RULES, Rule

__all__ = ["CALLER", "Call", "Denied", "Gate", "PolicyError", "RULES", "Rule", "cert_identities",
           "grants", "grpc_identities", "readable"]
