#!/bin/sh
# pip inside an image build. Behind a TLS-intercepting proxy the build passes the proxy's CA
# bundle as the build secret "ca_bundle" (images/build.sh --ca-bundle FILE): it is mounted for
# one RUN only, so it never lands in a layer of the image.
set -eu
if [ -s /run/secrets/ca_bundle ]; then
  export PIP_CERT=/run/secrets/ca_bundle
fi
exec python -m pip "$@"
