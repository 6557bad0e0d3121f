"""The per-state command tables (RFC 9051 §3, §6): which commands each state accepts.

An explicit registry: a command missing here is answered BAD "not allowed now", never
silently treated as something else.
"""

from __future__ import annotations

from mailstack.imap import commands_auth as a
from mailstack.imap import commands_mailbox as mb
from mailstack.imap import commands_metadata as md
from mailstack.imap import commands_quota as quota
from mailstack.imap import commands_selected as sel
from mailstack.imap import types as t
from mailstack.imap.commands_notify import notify
from mailstack.imap.contexts import cancelupdate
from mailstack.imap.fetch import fetch
from mailstack.imap.search_exec import search
from mailstack.imap.session import AUTH, LOGOUT, NOT_AUTH, SELECTED, Handler
from mailstack.imap.sort_exec import sort, thread

ANY: dict[type[t.Command], Handler] = {
    t.Capability: a.capability,
    t.Noop: a.noop,
    t.Logout: a.logout,
    t.Id: a.id_,
}

NOT_AUTHENTICATED: dict[type[t.Command], Handler] = {
    **ANY,
    t.StartTLS: a.starttls,
    t.Login: a.login,
    t.Authenticate: a.authenticate,
}

AUTHENTICATED: dict[type[t.Command], Handler] = {
    **ANY,
    t.Enable: a.enable,
    t.Compress: a.compress,
    t.GetMetadata: md.getmetadata,
    t.Notify: notify,
    t.GetQuota: quota.getquota,
    t.GetQuotaRoot: quota.getquotaroot,
    t.SetQuota: quota.setquota,
    t.SetMetadata: md.setmetadata,
    t.Namespace: a.namespace,
    t.Select: mb.select,
    t.Create: mb.create,
    t.Delete: mb.delete,
    t.Rename: mb.rename,
    t.Subscribe: mb.subscribe,
    t.Unsubscribe: mb.unsubscribe,
    t.List: mb.list_,
    t.Lsub: mb.lsub,
    t.Status: mb.status,
    t.Append: mb.append,
    t.Idle: sel.idle,
}

SELECTED_STATE: dict[type[t.Command], Handler] = {
    **{k: v for k, v in AUTHENTICATED.items() if k is not t.Enable},
    t.Check: sel.check,
    t.Close: sel.close,
    t.Unselect: sel.unselect,
    t.Expunge: sel.expunge,
    t.Search: search,
    t.Sort: sort,
    t.Thread: thread,
    t.CancelUpdate: cancelupdate,
    t.Fetch: fetch,
    t.Store: sel.store,
    t.Copy: sel.copy,
    t.Move: sel.move,
}

TABLES: dict[str, dict[type[t.Command], Handler]] = {
    NOT_AUTH: NOT_AUTHENTICATED,
    AUTH: AUTHENTICATED,
    SELECTED: SELECTED_STATE,
    LOGOUT: {},
}
