"""`RequestError`: a client error, sent as OpenAI's error body with its HTTP status.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].content[1].video_url.url",
               "code": null}}
"""
from typing import Optional


class RequestError(Exception):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
