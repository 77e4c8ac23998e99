#!/usr/bin/env bash
# System libraries the test suite uses, installed with apt-get where missing (make test runs this first).
# ImageMagick's MagickWand library is loaded by `wand` for the motion-blur and snow reference tests; where it
# is missing and cannot be installed (not root, no apt-get), those tests skip and say why.
set -uo pipefail
if ! ldconfig -p 2>/dev/null | grep -q 'libMagickWand'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libmagickwand-6.q16-6; } >/dev/null || echo 'could not install libmagickwand-6.q16-6; the wand tests will skip'
    else
        echo 'libMagickWand is missing (install libmagickwand-6.q16-6 as root); the wand tests will skip'
    fi
fi
exit 0
