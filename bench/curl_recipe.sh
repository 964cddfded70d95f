#!/bin/sh
# The classic blog recipe, for comparison only: IMDSv2 token, role, credentials, export, exec.
# No retries, no timeouts (it hangs forever off EC2), no region, no AWS_SECURITY_TOKEN.
set -e
IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
TOKEN=$(curl -s -X PUT "$IMDS/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")
ROLE=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/iam/security-credentials/")
CREDS=$(curl -s -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/iam/security-credentials/$ROLE")
AWS_ACCESS_KEY_ID=$(printf '%s' "$CREDS" | jq -r .AccessKeyId)
AWS_SECRET_ACCESS_KEY=$(printf '%s' "$CREDS" | jq -r .SecretAccessKey)
AWS_SESSION_TOKEN=$(printf '%s' "$CREDS" | jq -r .Token)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
exec "$@"
