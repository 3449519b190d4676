"""Verification of contributor output (DESIGN §1.6): pure statistics, decision rules and policy.

Imports no infrastructure: the verifier process, the gateway and the audit all call these.
"""
