"""IMDS as every part of imds-shim must agree on it: addresses, paths, headers, and the hop-limit story.

The client (:mod:`shim.imds.client`), the simulator, ``doctor`` and the tests take these from here, so a
path or the advice for the hop-limit symptom is written once. It imports nothing: the simulator and
the step-aside path must not pay for ``requests``.
"""

IPV4_ENDPOINT = "http://169.254.169.254"
IPV6_ENDPOINT = "http://[fd00:ec2::254]"

TOKEN_PATH = "/latest/api/token"
ROLE_PATH = "/latest/meta-data/iam/security-credentials/"  # + the role's name: its credentials
IDENTITY_DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
REGION_PATH = "/latest/meta-data/placement/region"
# The instance's end, announced (all 404 until there is something to say; see docs/interruptions.md).
SPOT_ACTION_PATH = "/latest/meta-data/spot/instance-action"
LIFECYCLE_STATE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
SCHEDULED_EVENTS_PATH = "/latest/meta-data/events/maintenance/scheduled"

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

# The symptom: the token PUT connects, and its answer never arrives, because IMDS sends it with an
# IP TTL of the hop limit, and the Docker bridge is one more hop. GETs (IMDSv1) are not limited.
HOP_LIMIT_CAUSE = (
    "the instance's metadata hop limit is probably 1, and a container on a bridge network is one "
    "hop further, so the token never arrives"
)
HOP_LIMIT_2 = "aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2"


def hop_limit_fix(in_pod: bool) -> str:
    """The fix for the hop-limit symptom. In a pod, hop limit 2 hands the node's role to every pod
    on the node, so a role of the pod's own comes first (imds-shim then steps aside)."""
    if in_pod:
        return (
            "give the pod a role of its own with EKS Pod Identity or IRSA (imds-shim then steps "
            f"aside); {HOP_LIMIT_2} also works, but gives every pod on the node the node's role"
        )
    return f"{HOP_LIMIT_2} (or use host networking, or an ECS task role)"
