"""The mailsite policy pack, enforced in every preview: `pulumi preview --policy-pack policy`."""

from pulumi_policy import EnforcementLevel, PolicyPack

from mailsite_policies import POLICIES

PolicyPack(name="mailsite", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
