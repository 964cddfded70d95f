#!/bin/sh
# The example's application: says what imds-shim handed it, without printing a secret.
if [ -z "${AWS_ACCESS_KEY_ID:-}" ]; then
    echo "no credentials (off EC2, with IMDS_SHIM_OPTIONAL=1?)"
    exit 0
fi
echo "credentials for ${AWS_ACCESS_KEY_ID%"${AWS_ACCESS_KEY_ID#????}"}…${AWS_SESSION_TOKEN:+ with a session token}," \
    "region ${AWS_REGION:-unknown}, account ${AWS_ACCOUNT_ID:-unknown}"
