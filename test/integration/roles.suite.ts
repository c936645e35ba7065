/**
 * Roles (docs/protocol.md "Roles" and "Removing members"), black-box against
 * the real `harmony serve`: the owner sets roles and hands the chat over, and
 * every pair of roles — the caller owner, admin, member or not a member at all,
 * the target the owner, an admin, a member, the caller themselves or someone
 * outside the chat — is tried for removing a member, renaming the chat,
 * adding a member, deleting the chat and changing a role. Each case gets a
 * chat of its own (its own owner; the admins, members and outsiders are
 * shared), and checks the answer and what the chat is afterwards: exactly the change the contract says, or
 * nothing at all. A caller who is not a member gets what an unknown chat gets,
 * word for word.
 */
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Api, api, type Harmony, type Reply, registerUser, startHarmony } from "../support/harmony.ts"

const expectStatus = (reply: Reply, status: number) => {
  expect(reply.status, `answered ${reply.status}: ${reply.text}`).toBe(status)
}

type Role = "owner" | "admin" | "member"
/** Who calls: a role in the chat, or a user who is not a member of it. */
type Actor = Role | "stranger"
/** Whom the call is about: a role (another holder of it when it is the caller's own), the caller, a non-member. */
type Target = Role | "self" | "outsider"

const actors: ReadonlyArray<Actor> = ["owner", "admin", "member", "stranger"]
const targets: ReadonlyArray<Target> = ["owner", "admin", "member", "self", "outsider"]
const roles: ReadonlyArray<Role> = ["owner", "admin", "member"]

/** `DELETE /v1/chats/{chatId}/members/{userId}`: the answer for each caller and target (docs/protocol.md). */
const removal: Record<Actor, Partial<Record<Target, number>>> = {
  owner: { admin: 204, member: 204, self: 204, outsider: 404 },
  admin: { owner: 403, admin: 403, member: 204, self: 204, outsider: 404 },
  member: { owner: 403, admin: 403, member: 403, self: 204, outsider: 403 },
  stranger: { owner: 404, admin: 404, member: 404, self: 404, outsider: 404 }
}

const all = (status: number): Record<Role, number> => ({ owner: status, admin: status, member: status })

/** `PATCH /v1/chats/{chatId}/members/{userId}` `{role}`: the answer for each caller, target and role. */
const roleChange: Record<Actor, Partial<Record<Target, Record<Role, number>>>> = {
  owner: {
    admin: all(200), // to owner: handing over
    member: all(200),
    self: { owner: 200, admin: 409, member: 409 }, // a chat always has an owner
    outsider: all(404)
  },
  admin: { owner: all(403), admin: all(403), member: all(403), self: all(403), outsider: all(403) },
  member: { owner: all(403), admin: all(403), member: all(403), self: all(403), outsider: all(403) },
  stranger: { owner: all(404), admin: all(404), member: all(404), self: all(404), outsider: all(404) }
}

/** Renaming the chat, adding a member and deleting the chat: the answers for each caller. */
const chatWide: Record<Actor, { rename: number; add: number; delete: number }> = {
  owner: { rename: 200, add: 200, delete: 204 },
  admin: { rename: 200, add: 200, delete: 403 },
  member: { rename: 403, add: 403, delete: 403 },
  stranger: { rename: 404, add: 404, delete: 404 }
}

const errorCodes: Record<number, string> = { 403: "forbidden", 404: "not_found", 409: "conflict" }

/** A chat as a member sees it: enough to tell any change. */
interface ChatState {
  readonly name: string | null
  readonly ownerId: string
  readonly roles: Readonly<Record<string, Role>>
}

export const rolesSuite = (mode: "embedded" | "cluster") => {
  describe(`roles (${mode} mode)`, { timeout: 180_000 }, () => {
    let harmony: Harmony | undefined
    let http: Api
    const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}`
    let counter = 0

    interface Account {
      readonly id: string
      readonly accessToken: string
    }

    const register = (label: string): Promise<Account> =>
      registerUser(http, `${label}-${run}-${(counter++).toString(36)}`)

    const setRole = (caller: Account, chatId: string, userId: string, role: string) =>
      http.patch(`/v1/chats/${chatId}/members/${userId}`, { role }, { token: caller.accessToken })

    /** Users shared by every case's chat: two admins, two members, one who watches and one outside. */
    let cast: Record<"admin" | "admin2" | "member" | "member2" | "watcher" | "stranger" | "outsider", Account>

    beforeAll(async () => {
      harmony = await startHarmony({ mode })
      http = api(harmony.url)
      const names = ["admin", "admin2", "member", "member2", "watcher", "stranger", "outsider"] as const
      const accounts = await Promise.all(names.map((name) => register(name.slice(0, 2))))
      cast = Object.fromEntries(names.map((name, i) => [name, accounts[i]!])) as typeof cast
    })

    afterAll(async () => {
      if (harmony === undefined) return
      expect(await harmony.stop("SIGTERM"), harmony.logs()).toEqual({ code: 0, signal: null })
    })

    /** A chat of its own for one case: a new owner, the shared admins (made so by the owner) and members. */
    const team = async () => {
      const owner = await register("o")
      const reply = await http.post(
        "/v1/chats",
        {
          name: `roles ${run}`,
          kind: "group",
          memberIds: [cast.admin, cast.admin2, cast.member, cast.member2, cast.watcher].map((m) => m.id)
        },
        { token: owner.accessToken }
      )
      expectStatus(reply, 201)
      const chatId = reply.body.id as string
      expectStatus(await setRole(owner, chatId, cast.admin.id, "admin"), 200)
      expectStatus(await setRole(owner, chatId, cast.admin2.id, "admin"), 200)
      const caller = (actor: Actor) =>
        ({ owner, admin: cast.admin, member: cast.member, stranger: cast.stranger })[actor]
      const target = (actor: Actor, whom: Target) =>
        whom === "self"
          ? caller(actor)
          : whom === "outsider"
            ? cast.outsider
            : whom === actor // another holder of the caller's own role
              ? { owner, admin: cast.admin2, member: cast.member2 }[whom]
              : { owner, admin: cast.admin, member: cast.member }[whom]
      return { chatId, owner, caller, target }
    }

    /** The chat as the watcher (a member no case acts on) sees it; undefined once it is gone. */
    const stateOf = async (chatId: string): Promise<ChatState | undefined> => {
      const reply = await http.get(`/v1/chats/${chatId}`, { token: cast.watcher.accessToken })
      if (reply.status === 404) return undefined
      expectStatus(reply, 200)
      const chat = reply.body
      return {
        name: chat.name,
        ownerId: chat.ownerId,
        roles: Object.fromEntries(chat.members.map((m: { userId: string; role: Role }) => [m.userId, m.role]))
      }
    }

    /** A caller who is not a member learns nothing: the answer is the unknown chat's, word for word. */
    const expectUnknownChat = async (reply: Reply, chatId: string, ask: (chatId: string) => Promise<Reply>) => {
      expectStatus(reply, 404)
      const unknownId = randomUUID()
      const unknown = await ask(unknownId)
      expectStatus(unknown, 404)
      expect(reply.body).toEqual({ error: { code: "not_found", message: expect.any(String) } })
      expect(reply.body.error.message.replaceAll(chatId, "X")).toBe(
        unknown.body.error.message.replaceAll(unknownId, "X")
      )
    }

    /**
     * `actor` answered `status`; on success the chat is `changed` from what it
     * was, otherwise exactly as it was. (A member asking about someone outside
     * the chat may learn that they are not a member; a stranger learns nothing.)
     */
    const check = async (
      actor: Actor,
      chatId: string,
      status: number,
      ask: (chatId: string) => Promise<Reply>,
      changed: (before: ChatState, after: ChatState | undefined) => ChatState | undefined
    ) => {
      const before = (await stateOf(chatId))!
      const reply = await ask(chatId)
      if (actor === "stranger") await expectUnknownChat(reply, chatId, ask)
      else expectStatus(reply, status)
      if (status >= 400) expect(reply.body.error.code).toBe(errorCodes[status])
      const after = await stateOf(chatId)
      expect(after).toEqual(status < 300 ? changed(before, after) : before)
      return reply
    }

    const without = (roles: Readonly<Record<string, Role>>, userId: string) =>
      Object.fromEntries(Object.entries(roles).filter(([id]) => id !== userId))

    describe.concurrent("remove a member: every caller and target", () => {
      for (const actor of actors) {
        for (const whom of targets) {
          const status = removal[actor][whom]
          if (status === undefined) continue
          it(`${actor} removes ${whom}: ${status}`, async () => {
            const t = await team()
            const as = t.caller(actor)
            const gone = t.target(actor, whom)
            await check(
              actor,
              t.chatId,
              status,
              (chatId) => http.delete(`/v1/chats/${chatId}/members/${gone.id}`, { token: as.accessToken }),
              (before, after) => {
                if (before.roles[gone.id] !== "owner") return { ...before, roles: without(before.roles, gone.id) }
                // The owner left: the chat passes to its oldest admin (both joined at once: either).
                const heir = after?.ownerId ?? ""
                expect(before.roles[heir]).toBe("admin")
                return { ...before, ownerId: heir, roles: { ...without(before.roles, gone.id), [heir]: "owner" } }
              }
            )
          })
        }
      }
    })

    describe.concurrent("rename, add to and delete the chat: every caller", () => {
      for (const actor of actors) {
        const { rename, add, delete: remove } = chatWide[actor]
        it(`${actor} renames: ${rename}`, async () => {
          const t = await team()
          const name = `by ${actor} ${randomUUID().slice(0, 8)}`
          const reply = await check(
            actor,
            t.chatId,
            rename,
            (chatId) => http.patch(`/v1/chats/${chatId}`, { name }, { token: t.caller(actor).accessToken }),
            (before) => ({ ...before, name })
          )
          if (rename === 200) expect(reply.body).toMatchObject({ id: t.chatId, name })
        })
        it(`${actor} adds a member: ${add}`, async () => {
          const t = await team()
          const reply = await check(
            actor,
            t.chatId,
            add,
            (chatId) =>
              http.post(
                `/v1/chats/${chatId}/members`,
                { userIds: [cast.outsider.id] },
                { token: t.caller(actor).accessToken }
              ),
            (before) => ({ ...before, roles: { ...before.roles, [cast.outsider.id]: "member" } })
          )
          if (add === 200) expect(reply.body.members).toContainEqual({ userId: cast.outsider.id, role: "member" })
        })
        it(`${actor} deletes: ${remove}`, async () => {
          const t = await team()
          await check(
            actor,
            t.chatId,
            remove,
            (chatId) => http.delete(`/v1/chats/${chatId}`, { token: t.caller(actor).accessToken }),
            () => undefined
          )
        })
      }
    })

    describe.concurrent("change a role: every caller, target and role", () => {
      for (const actor of actors) {
        for (const whom of targets) {
          for (const role of roles) {
            const status = roleChange[actor][whom]?.[role]
            if (status === undefined) continue
            it(`${actor} makes ${whom} ${role}: ${status}`, async () => {
              const t = await team()
              const as = t.caller(actor)
              const user = t.target(actor, whom)
              const reply = await check(
                actor,
                t.chatId,
                status,
                (chatId) => setRole(as, chatId, user.id, role),
                (before) =>
                  role === "owner" && user.id !== as.id
                    ? { ...before, ownerId: user.id, roles: { ...before.roles, [as.id]: "admin", [user.id]: "owner" } }
                    : { ...before, roles: { ...before.roles, [user.id]: role } }
              )
              // The answer is the chat as it is after the change.
              if (status === 200) {
                const after = (await stateOf(t.chatId))!
                expect(reply.body.ownerId).toBe(after.ownerId)
                expect(reply.body.members).toHaveLength(Object.keys(after.roles).length)
                for (const m of reply.body.members) expect(after.roles[m.userId]).toBe(m.role)
              }
            })
          }
        }
      }
    })

    describe.concurrent("roles in use", () => {
      it("an admin made by the owner renames and removes members at once; made a member again, no longer", async () => {
        const t = await team()
        const promoted = cast.member
        expectStatus(await setRole(t.owner, t.chatId, promoted.id, "admin"), 200)
        expectStatus(
          await http.patch(`/v1/chats/${t.chatId}`, { name: "by the new admin" }, { token: promoted.accessToken }),
          200
        )
        expectStatus(
          await http.delete(`/v1/chats/${t.chatId}/members/${cast.member2.id}`, { token: promoted.accessToken }),
          204
        )
        expectStatus(await setRole(t.owner, t.chatId, promoted.id, "member"), 200)
        expectStatus(await http.patch(`/v1/chats/${t.chatId}`, { name: "again" }, { token: promoted.accessToken }), 403)
        const list = await http.get("/v1/me/chats", { token: promoted.accessToken })
        expect(list.body.chats.find((c: any) => c.id === t.chatId)).toMatchObject({ role: "member" })
      })

      it("the owner hands the chat over: the new owner rules, the old one is an admin", async () => {
        const t = await team()
        const heir = cast.member
        const reply = await setRole(t.owner, t.chatId, heir.id, "owner")
        expectStatus(reply, 200)
        expect(reply.body).toMatchObject({ ownerId: heir.id })
        expect(reply.body.members).toContainEqual({ userId: heir.id, role: "owner" })
        expect(reply.body.members).toContainEqual({ userId: t.owner.id, role: "admin" })
        expect(reply.body.members.filter((m: any) => m.role === "owner")).toHaveLength(1)
        // The old owner rules no more; the new one does.
        expectStatus(await setRole(t.owner, t.chatId, heir.id, "member"), 403)
        expectStatus(await http.delete(`/v1/chats/${t.chatId}`, { token: t.owner.accessToken }), 403)
        expectStatus(await setRole(heir, t.chatId, t.owner.id, "member"), 200)
        expectStatus(await http.delete(`/v1/chats/${t.chatId}`, { token: heir.accessToken }), 204)
      })

      it("a chat whose last member leaves is gone", async () => {
        const owner = await register("o")
        const created = await http.post("/v1/chats", { kind: "group", memberIds: [] }, { token: owner.accessToken })
        expectStatus(created, 201)
        expectStatus(
          await http.delete(`/v1/chats/${created.body.id}/members/${owner.id}`, { token: owner.accessToken }),
          204
        )
        const list = await http.get("/v1/me/chats", { token: owner.accessToken })
        expect(list.body.chats.map((c: any) => c.id)).not.toContain(created.body.id)
      })

      it("bad roles, no token and the OpenAPI document", async () => {
        const t = await team()
        expectStatus(await setRole(t.owner, t.chatId, cast.member.id, "king"), 400)
        expectStatus(await http.patch(`/v1/chats/${t.chatId}/members/${cast.member.id}`, { role: "admin" }), 401)
        const reply = await http.get("/openapi.json")
        expectStatus(reply, 200)
        const operation = reply.body.paths["/v1/chats/{chatId}/members/{userId}"]?.patch
        expect(operation, JSON.stringify(Object.keys(reply.body.paths))).toBeDefined()
        expect(JSON.stringify(operation.requestBody)).toContain("role")
      })
    })
  })
}
