"""What the schemathesis tests share: strategies for the media types that are not JSON.

A media type is registered process-wide, so every test module that fuzzes an app serving one imports
this module (a test run alone must not depend on another module having been imported first)."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from mercia.federation.messages import RESULT_MEDIA_TYPE

# a node's result is an Arrow IPC stream: schemathesis sends bytes (unsigned: refused before they are read)
schemathesis.openapi.media_type(RESULT_MEDIA_TYPE, st.binary(max_size=512))
