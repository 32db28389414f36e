"""A WSGI app that rebuilds Frappe v15's request dispatch (FRAPPE.md section 11) with werkzeug's
own Request, Map, Rule and Submount and werkzeug's form parsing, and reports what Frappe would
have run instead of running it.

Read from Frappe 15.44.2: `frappe/app.py` (`application`, `make_form_dict`), `frappe/api/__init__.py`
(`API_URL_MAP`), `frappe/api/v1.py`, `frappe/api/v2.py` and `frappe/sessions.py` (where `sid`
comes from). Only the classification is reproduced; nothing is executed.

Every request whose body was read (completely or not) is appended as one JSON line to the
file named by the `DIFF_LOG` environment variable: gunicorn's sync workers are separate
processes, so that file is the only shared state.
"""

import json
import os
import time

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule, Submount
from werkzeug.wrappers import Request, Response

# DocType -> (app, module), standing in for `frappe.modules.utils.load_doctype_module`.
DOCTYPE_MODULES = {
    "User": ("frappe", "Core"),
    "ToDo": ("frappe", "Desk"),
    "Note": ("frappe", "Desk"),
    "Customer": ("erpnext", "Selling"),
    "Sales Invoice": ("erpnext", "Accounts"),
}


def scrub(text):
    return text.replace(" ", "_").replace("-", "_").lower()


def doctype_controller(doctype):
    """The dotted controller module of a DocType, as `load_doctype_module` resolves it."""
    app_module = DOCTYPE_MODULES.get(doctype)
    if app_module is None:
        return None
    app, module = app_module
    return f"{app}.{scrub(module)}.doctype.{scrub(doctype)}.{scrub(doctype)}"


# ----- endpoints: each returns the "runs" description -------------------------------------


def v1_upload_file():
    return {"kind": "method", "api": "v1", "method": "upload_file"}


def v1_rpc(method):
    # frappe/api/v1.py handle_rpc_call: `frappe.form_dict.cmd = method.split("/")[0]`.
    return {"kind": "method", "api": "v1", "method": method.split("/")[0]}


def resource(op):
    def endpoint(doctype, name=None, form_dict=None):
        runs = {"kind": "resource", "api": "v1", "op": op, "doctype": doctype}
        if name is not None:
            runs["name"] = name
        if op == "run_method":
            runs["run_method"] = form_dict.get("run_method")
        return runs

    endpoint.wants_form_dict = True
    return endpoint


def v2_fixed(method):
    def endpoint():
        return {"kind": "method", "api": "v2", "method": method}

    return endpoint


def v2_rpc(method):
    return {"kind": "method", "api": "v2", "method": method}


def v2_doctype_method(doctype, method):
    # frappe/api/v2.py handle_rpc_call(method, doctype): module.__name__ + "." + method.
    controller = doctype_controller(doctype)
    resolved = f"{controller}.{method}" if controller else None
    return {"kind": "doctype_method", "api": "v2", "doctype": doctype, "method": method, "resolved": resolved}


def document(op):
    def endpoint(doctype, name=None, method=None):
        runs = {"kind": "document", "api": "v2", "op": op, "doctype": doctype}
        if name is not None:
            runs["name"] = name
        if method is not None:
            runs["method"] = method
        return runs

    return endpoint


def doctype_collection(op):
    def endpoint(doctype):
        return {"kind": "doctype", "api": "v2", "op": op, "doctype": doctype}

    return endpoint


v1_rules = [
    Rule("/method/upload_file", endpoint=v1_upload_file),
    Rule("/method/<path:method>", endpoint=v1_rpc),
    Rule("/resource/<doctype>", methods=["GET"], endpoint=resource("list")),
    Rule("/resource/<doctype>", methods=["POST"], endpoint=resource("create")),
    Rule("/resource/<doctype>/<path:name>/", methods=["GET"], endpoint=resource("read")),
    Rule("/resource/<doctype>/<path:name>/", methods=["PUT"], endpoint=resource("update")),
    Rule("/resource/<doctype>/<path:name>/", methods=["DELETE"], endpoint=resource("delete")),
    Rule("/resource/<doctype>/<path:name>/", methods=["POST"], endpoint=resource("run_method")),
]

v2_rules = [
    Rule("/method/login", endpoint=v2_fixed("login")),
    Rule("/method/logout", endpoint=v2_fixed("logout")),
    Rule("/method/ping", endpoint=v2_fixed("ping")),
    Rule("/method/upload_file", endpoint=v2_fixed("upload_file")),
    Rule("/method/<method>", endpoint=v2_rpc),
    Rule("/method/run_doc_method", methods=["GET", "POST"], endpoint=v2_fixed("run_doc_method")),
    Rule("/method/<doctype>/<method>", endpoint=v2_doctype_method),
    Rule("/document/<doctype>", methods=["GET"], endpoint=document("list")),
    Rule("/document/<doctype>", methods=["POST"], endpoint=document("create")),
    Rule("/document/<doctype>/<path:name>/", methods=["GET"], endpoint=document("read")),
    Rule("/document/<doctype>/<path:name>/", methods=["PATCH", "PUT"], endpoint=document("update")),
    Rule("/document/<doctype>/<path:name>/", methods=["DELETE"], endpoint=document("delete")),
    Rule(
        "/document/<doctype>/<path:name>/method/<method>/",
        methods=["GET", "POST"],
        endpoint=document("method"),
    ),
    Rule("/doctype/<doctype>/meta", methods=["GET"], endpoint=doctype_collection("meta")),
    Rule("/doctype/<doctype>/count", methods=["GET"], endpoint=doctype_collection("count")),
]

API_URL_MAP = Map(
    [Submount("/api", v1_rules), Submount("/api/v1", v1_rules), Submount("/api/v2", v2_rules)],
    strict_slashes=False,
    merge_slashes=False,
)


# ----- form_dict and dispatch, as frappe/app.py --------------------------------------------


class BodyIncomplete(Exception):
    pass


def read_body(request):
    """`request.get_data()` as Frappe calls it; raises BodyIncomplete when the stream ends
    before Content-Length (werkzeug raises ClientDisconnected, gunicorn NoMoreData)."""
    try:
        data = request.get_data(cache=True)
    except Exception as e:  # ClientDisconnected, gunicorn's NoMoreData / ChunkMissingTerminator
        raise BodyIncomplete(repr(e)) from e
    declared = request.content_length
    if declared is not None and len(data) != declared:
        raise BodyIncomplete(f"read {len(data)} of {declared} bytes")
    return data


def make_form_dict(request, data):
    if data and request.is_json:
        args = json.loads(data)
    else:
        args = {}
        args.update(request.args or {})  # dict.update(MultiDict): the first value of each name
        args.update(request.form or {})
    if isinstance(args, dict):
        form_dict = dict(args)
        form_dict.pop("_", None)
    elif isinstance(args, list):
        form_dict = {"data": args}
    else:
        raise ValueError("Invalid request arguments")
    return form_dict


def dispatch(request, form_dict):
    """(status, runs) for what `application` would run."""
    if request.method == "OPTIONS":
        return 200, {"kind": "options"}
    cmd = form_dict.get("cmd")
    if cmd:
        return 200, {"kind": "method", "via": "cmd", "method": cmd}
    if request.path.startswith("/api/"):
        try:
            endpoint, arguments = API_URL_MAP.bind_to_environ(request.environ).match()
        except (NotFound, MethodNotAllowed):
            return 404, {"kind": "not_found"}
        except HTTPException as e:  # e.g. a RequestRedirect; Frappe returns it as the response
            return e.code or 500, {"kind": "http_exception", "name": type(e).__name__}
        if getattr(endpoint, "wants_form_dict", False):
            arguments["form_dict"] = form_dict
        return 200, endpoint(**arguments)
    return 200, {"kind": "page", "path": request.path}


def session_id(request, form_dict):
    """frappe/sessions.py: `form_dict.get("sid") or request.cookies.get("sid", "Guest")`."""
    sid = form_dict.get("sid") or request.cookies.get("sid") or "Guest"
    return None if sid == "Guest" else str(sid)


def record(entry):
    path = os.environ.get("DIFF_LOG")
    if not path:
        return
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write on an O_APPEND file: lines never interleave
    finally:
        os.close(fd)


def application(environ, start_response):
    request = Request(environ)
    base = {
        "method": request.method,
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "request_id": environ.get("HTTP_X_REQUEST_ID"),
        "content_length": request.content_length,
        "pid": os.getpid(),
        "time": time.time(),
    }
    try:
        data = read_body(request)
    except BodyIncomplete as e:
        record({**base, "complete": False, "error": str(e), "runs": None, "body_len": None})
        response = Response(json.dumps({"error": "incomplete body"}), status=400, mimetype="application/json")
        return response(environ, start_response)

    status = 200
    try:
        form_dict = make_form_dict(request, data)
        status, runs = dispatch(request, form_dict)
        sid = session_id(request, form_dict)
    except ValueError as e:  # bad JSON, a JSON scalar
        form_dict, runs, sid, status = {}, {"kind": "bad_request", "error": str(e)}, None, 400

    user_header = environ.get("HTTP_X_FRAPPE_USER")
    answer = {
        "runs": runs,
        "acts_as": f"session:{sid}" if sid else (user_header or "Guest"),
        "sid": sid,
        "user_header": user_header,
        "authorization": environ.get("HTTP_AUTHORIZATION"),
        "cookie": environ.get("HTTP_COOKIE"),
        "method": request.method,
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "content_type": environ.get("CONTENT_TYPE"),
        "body_len": len(data),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }
    record({**base, "complete": True, "runs": runs, "body_len": len(data), "acts_as": answer["acts_as"]})
    response = Response(json.dumps(answer), status=status, mimetype="application/json")
    return response(environ, start_response)
