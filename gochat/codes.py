"""Output codes of the wire contract (DESIGN.md section 4), in one place."""

OK = 200
NOT_LOGGED_IN = 1000
PARAM_ILLEGAL = 1001
UNAUTHORIZED_USER_ID = 1002
UNAUTHORIZED = 1003
SERVER_ERROR = 1004
NO_DATA = 1005
UNKNOWN_COMMAND = 1010
OUT_OF_ORDER = 1011
TOO_LARGE = 1012
RATE_LIMITED = 1013

MESSAGES = {
    OK: "OK",
    NOT_LOGGED_IN: "not logged in",
    PARAM_ILLEGAL: "parameter illegal",
    UNAUTHORIZED_USER_ID: "unauthorized user id",
    UNAUTHORIZED: "unauthorized",
    SERVER_ERROR: "server error, retry",
    NO_DATA: "no data",
    UNKNOWN_COMMAND: "unknown command",
    OUT_OF_ORDER: "out of order",
    TOO_LARGE: "too large",
    RATE_LIMITED: "rate limited",
}
