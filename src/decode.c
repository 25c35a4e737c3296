/*
** From an HTTP response to a page or an error object.
**
** JSON is decoded by a private lua-cjson instance (cjson.new(), with NaN,
** Infinity and hex numbers refused), then normalised in place in one pass:
** JSON null (cjson's light userdata) becomes an absent field, integral
** numbers become Lua integers, and anything that could not be represented
** exactly (beyond 2^53, or non-finite) is a decode error rather than a
** silently rounded value.
*/
#include <math.h>
#include <string.h>

#include "osvi.h"

static const char decode_key = 'd'; /* registry[&decode_key] = decode fn */

#define MAX_EXACT 9007199254740992.0 /* 2^53 */

/* Pushes the path step for the key at `key` (".name" or "[i]") followed by
** rest: "data[3]" .. ".campaign_id: an integer beyond 2^53 ...". */
static void push_field(lua_State *L, int key, const char *rest) {
  /* each level of an unwinding failure leaves its message behind: room */
  luaL_checkstack(L, 3, "decoding a page");
  if (lua_type(L, key) == LUA_TSTRING)
    lua_pushfstring(L, ".%s%s", lua_tostring(L, key), rest);
  else
    lua_pushfstring(L, "[%s]%s", luaL_tolstring(L, key, NULL), rest);
}

/* Normalises the table at idx and everything below it; with `object`, the
** table must be a JSON object (string keys only). Returns 1, or 0
** with a message at the top of the stack (above leftovers the caller drops). */
/* NOLINTNEXTLINE(misc-no-recursion): bounded, depth > 64 stops it */
static int normalise(lua_State *L, int idx, int depth, int object) {
  if (depth > 64 || !lua_checkstack(L, 4)) {
    lua_pushliteral(L, ": nested too deeply");
    return 0;
  }
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (object && lua_type(L, -2) != LUA_TSTRING) {
      lua_pushliteral(L, ": not an object");
      return 0;
    }
    switch (lua_type(L, -1)) {
      case LUA_TLIGHTUSERDATA: /* JSON null: the field is absent */
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, idx);
        break;
      case LUA_TNUMBER:
        if (!lua_isinteger(L, -1)) {
          lua_Number x = lua_tonumber(L, -1);
          if (!isfinite(x)) {
            push_field(L, lua_gettop(L) - 1, ": a number out of range");
            return 0;
          }
          if (x == floor(x)) {
            if (fabs(x) >= MAX_EXACT) {
              push_field(L, lua_gettop(L) - 1,
                         ": an integer beyond 2^53, which cannot be exact");
              return 0;
            }
            lua_pushvalue(L, -2);
            lua_pushinteger(L, (lua_Integer)x);
            lua_rawset(L, idx);
          }
        }
        break;
      case LUA_TTABLE: {
        int key = lua_gettop(L) - 1;
        if (!normalise(L, -1, depth + 1, 0)) {
          push_field(L, key, lua_tostring(L, -1)); /* the path grows */
          return 0;
        }
      } break;
      default: break;
    }
    lua_pop(L, 1);
  }
  return 1;
}

/* Calls the private cjson decode on (body, len) in protected mode: pushes
** the value (returns 1) or the error message (returns 0). */
static int json_decode(lua_State *L, const char *body, size_t len) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key);
  lua_pushlstring(L, body, len);
  int status = lua_pcall(L, 1, 1, 0);
  /* Only cjson's own complaints about the text mean "not JSON" (lua-cjson
  ** 2.1: "... at character N", and its refusal of UTF-16/32); anything
  ** else, out of memory or an interrupt from the host, goes on up as is. */
  if (status == LUA_ERRMEM ||
      (status != LUA_OK &&
       (lua_type(L, -1) != LUA_TSTRING ||
        (strstr(lua_tostring(L, -1), " at character ") == NULL &&
         strstr(lua_tostring(L, -1), "does not support UTF-16") == NULL))))
    lua_error(L);
  return status == LUA_OK;
}

static const char *reason(long status) {
  switch (status) {
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
  }
}

/* If the JSON at the top is an object with an array of strings in
** "errors", set it on the error object below it; pops the JSON. */
static void copy_server_errors(lua_State *L, int err, int json) {
  if (lua_istable(L, json)) {
    lua_getfield(L, json, "errors");
    if (lua_istable(L, -1)) {
      lua_Integer i, j = 0, n = (lua_Integer)lua_rawlen(L, -1);
      lua_createtable(L, (int)n, 0);
      for (i = 1; i <= n; i++) { /* strings only, kept as a sequence */
        lua_rawgeti(L, -2, i);
        if (lua_type(L, -1) == LUA_TSTRING)
          lua_rawseti(L, -2, ++j);
        else
          lua_pop(L, 1);
      }
      lua_setfield(L, err, "errors");
    }
    lua_pop(L, 1);
  }
}

static int push_status_error(lua_State *L, long status, const char *body,
                             size_t len, long retry_after) {
  osvi_kind kind;
  const char *what;
  int json, err;
  switch (status) {
    case 401:
      kind = OSVI_E_AUTH;
      what = "the API token was refused";
      break;
    case 403:
      kind = OSVI_E_FORBIDDEN;
      what = "forbidden";
      break;
    case 404: /* osvi_decode_explain says what it may mean */
      kind = OSVI_E_NOT_FOUND;
      what = "not found";
      break;
    case 422:
      kind = OSVI_E_VALIDATION;
      what = "the server refused the filters";
      break;
    case 429:
      kind = OSVI_E_RATE_LIMITED;
      what = "too many requests";
      break;
    default:
      if (status >= 500 && status <= 599) {
        kind = OSVI_E_SERVER;
        what = "server error";
      } else if (status == 301 || status == 302 || status == 303 ||
                 status == 307 || status == 308) {
        kind = OSVI_E_HTTP;
        what = "redirect not followed (the API token is sent to the API only)";
      } else { /* 304 too: osvi never asks conditionally */
        kind = OSVI_E_HTTP;
        what = "unexpected HTTP status";
      }
  }
  json = json_decode(L, body, len) ? lua_gettop(L) : 0;
  if (json == 0) {
    lua_pop(L, 1); /* the decode message: an HTML or empty body is no news */
    osvi_error_push(L, kind, status, "%s: %d %s%s", what, (int)status,
                    reason(status),
                    len > 0 && body[0] == '<' ? " (HTML body, not JSON)" : "");
  } else {
    osvi_error_push(L, kind, status, "%s: %d %s", what, (int)status,
                    reason(status));
  }
  err = lua_gettop(L);
  if (json != 0) {
    copy_server_errors(L, err, json);
    lua_remove(L, json);
  }
  if (retry_after >= 0) {
    lua_pushinteger(L, retry_after);
    osvi_error_set(L, "retry_after");
  }
  return 0;
}

void osvi_decode_explain(lua_State *L, const char *query) {
  const char *q = query != NULL ? query : "";
  int agent =
      strncmp(q, "agent_uuid=", 11) == 0 || strstr(q, "&agent_uuid=") != NULL;
  lua_getfield(L, -1, "kind");
  if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "not_found") == 0) {
    lua_getfield(L, -2, "message"); /* err,kind,message */
    lua_pushfstring(L, "%s (%s)", lua_tostring(L, -1),
                    agent ? "is the agent_uuid on this account?"
                          : "no agent_uuid was asked for: is base_url the "
                            "API's root?");
    lua_setfield(L, -4, "message");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Pushes a decode error with the message at the top (which is popped). */
static int decode_error(lua_State *L, long status, const char *prefix) {
  const char *why = lua_tostring(L, -1);
  osvi_error_push(L, OSVI_E_DECODE, status, "%s%s", prefix, why ? why : "");
  lua_remove(L, -2);
  return 0;
}

/* Checks meta's four counters: present, integral, not negative. */
static int check_meta(lua_State *L, int meta) {
  static const char *const fields[] = {"current_page", "total_pages",
                                       "total_count", "per_page", NULL};
  int i;
  for (i = 0; fields[i] != NULL; i++) {
    lua_getfield(L, meta, fields[i]);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) {
      lua_pushfstring(L, "meta.%s is missing or not a non-negative integer",
                      fields[i]);
      return 0;
    }
    lua_pop(L, 1);
  }
  return 1;
}

/* Normalises data[1..n], checking it is an array of objects. */
static int check_data(lua_State *L, int data) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, data), count = 0;
  lua_pushnil(L);
  while (lua_next(L, data)) {
    lua_Integer i;
    /* on failure the message is left at the top, above whatever else */
    if (!lua_isinteger(L, -2) || (i = lua_tointeger(L, -2)) < 1 || i > n) {
      lua_pushliteral(L, "'data' is not an array");
      return 0;
    }
    if (!lua_istable(L, -1)) {
      lua_pushfstring(L, "data[%I] is not an object", (LUAI_UACINT)i);
      return 0;
    }
    if (!normalise(L, -1, 1, 1)) {
      lua_pushfstring(L, "data[%I]%s", (LUAI_UACINT)i, lua_tostring(L, -1));
      return 0;
    }
    count++;
    lua_pop(L, 1);
  }
  if (count != n) {
    lua_pushliteral(L, "'data' is not an array");
    return 0;
  }
  return 1;
}

/* meta that disagrees with data: more calls than per_page. */
static int too_many(lua_State *L, int data, int meta) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, data), per_page;
  lua_getfield(L, meta, "per_page");
  per_page = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (n <= per_page) return 0;
  lua_pushfstring(L, "'data' has %I calls, more than meta.per_page (%I)",
                  (LUAI_UACINT)n, (LUAI_UACINT)per_page);
  return 1;
}

int osvi_decode_response(lua_State *L, long status, const char *body,
                         size_t len, long retry_after) {
  int top, data, meta;
  if (status < 200 || status > 299)
    return push_status_error(L, status, body, len, retry_after);
  if (!json_decode(L, body, len))
    return decode_error(L, status,
                        len > 0 && body[0] == '<'
                            ? "the response is HTML, not JSON: "
                            : "the response is not JSON: ");
  top = lua_gettop(L);
  if (!lua_istable(L, top)) {
    lua_pushliteral(L, "expected a JSON object at the top level");
    lua_remove(L, top);
    return decode_error(L, status, "");
  }
  lua_getfield(L, top, "success");
  if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    osvi_error_push(L, OSVI_E_API, status, "the API answered success: false");
    lua_pushvalue(L, top);
    copy_server_errors(L, top + 1, top + 2);
    lua_pop(L, 1);
    lua_remove(L, top);
    return 0;
  }
  if (lua_type(L, -1) != LUA_TBOOLEAN) {
    lua_settop(L, top - 1);
    lua_pushliteral(L, "'success' is missing or not a boolean");
    return decode_error(L, status, "");
  }
  lua_pop(L, 1);
  lua_getfield(L, top, "data");
  data = lua_gettop(L);
  lua_getfield(L, top, "meta");
  meta = lua_gettop(L);
  if (!lua_istable(L, data) || !lua_istable(L, meta)) {
    lua_pushfstring(L, "'%s' is missing or not %s",
                    lua_istable(L, data) ? "meta" : "data",
                    lua_istable(L, data) ? "an object" : "an array");
  } else if (!normalise(L, meta, 1, 1)) {
    lua_pushfstring(L, "meta%s", lua_tostring(L, -1));
  } else if (!check_meta(L, meta) || !check_data(L, data) ||
             too_many(L, data, meta)) {
    /* the message is at the top */
  } else {
    lua_createtable(L, 0, 2); /* top,data,meta,page */
    lua_pushvalue(L, data);
    lua_setfield(L, -2, "data");
    lua_pushvalue(L, meta);
    lua_setfield(L, -2, "meta");
    lua_replace(L, top);
    lua_settop(L, top);
    return 1;
  }
  lua_replace(L, top);
  lua_settop(L, top);
  return decode_error(L, status, "");
}

/* Builds the private decoder: cjson.new() with invalid numbers refused. */
int osvi_decode_open(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  switch (lua_pcall(L, 1, 1, 0)) {
    case LUA_OK: break;
    case LUA_ERRMEM: return lua_error(L);
    default:
      return luaL_error(L, "osvi needs lua-cjson: %s", lua_tostring(L, -1));
  }
  lua_getfield(L, -1, "new");
  if (!lua_isfunction(L, -1))
    return luaL_error(L, "osvi needs lua-cjson 2.1 or later (cjson.new)");
  lua_call(L, 0, 1); /* cjson, instance */
  lua_getfield(L, -1, "decode_invalid_numbers");
  lua_pushboolean(L, 0);
  lua_call(L, 1, 0);
  lua_getfield(L, -1, "decode");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &decode_key);
  lua_pop(L, 2);
  return 0;
}
