"""The member app API: signup and tokens, readings in, the member's own readings and summary out.

`create_app(settings)` builds the FastAPI app; `vigil api` (services/cli_api.py) serves it.
"""

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.api.tokens import revoke_member_tokens

__all__ = ["ApiSettings", "create_app", "revoke_member_tokens"]
