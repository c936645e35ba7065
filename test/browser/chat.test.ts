/**
 * The web client in a real browser: the `harmony serve` binary (embedded
 * mode) serving dist/web, Debian's chromium driven by playwright-core, two
 * users in two browser contexts. They sign up, create a chat, exchange
 * messages, see each other typing and their read receipts; one reloads and
 * scrolls back through the whole history; the server restarts under them and
 * both pages reconnect by themselves, with nothing lost or doubled. Alice
 * edits, reacts to and deletes messages, and bob's page shows each change
 * live, and the same after a reload.
 *
 * Screenshots of each step go to .test-results/screenshots (CI's artifacts),
 * and of both pages whenever a step fails. Chromium comes from
 * scripts/browser.sh (run by scripts/test.sh); without it this suite fails,
 * saying so. The web client is built first (scripts/build-web.mjs) unless
 * scripts/test.sh just did (HARMONY_WEB_BUILT=1).
 */
import { execFileSync } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest"
import { api, type Harmony, repoRoot, startHarmony } from "../support/harmony.ts"

const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium"
const screenshots = join(repoRoot, ".test-results", "screenshots")
/** Waits are generous: two busy cores run the server, two pages and the tests. */
const waitMs = 45_000
const password = "correct horse battery"
const run = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 5)}`
const aliceName = `alice-${run}`
const bobName = `bob-${run}`
/** Messages sent over HTTP so the history spans more than one page (the client loads 50 at a time). */
const bulk = 70

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls `probe` until it answers true, or fails naming what it waited for and what it last saw. */
const until = async (what: string, probe: () => Promise<boolean>, timeoutMs = waitMs) => {
  const deadline = Date.now() + timeoutMs
  let problem = "never true"
  for (;;) {
    try {
      if (await probe()) return
      problem = "never true"
    } catch (error) {
      problem = error instanceof Error ? error.message.split("\n")[0]! : String(error)
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what} (${problem})`)
    await sleep(150)
  }
}

const shoot = async (page: Page, name: string) => {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true })
}

/** The seqs of the messages a page shows, in page order. */
const seqsOn = (page: Page) =>
  page.$$eval("[data-testid=message]", (nodes) => nodes.map((node) => Number(node.getAttribute("data-seq"))))

const bodiesOn = (page: Page) =>
  page.$$eval("[data-testid=message-body]", (nodes) => nodes.map((node) => node.textContent ?? ""))

const textOf = async (page: Page, testId: string) => (await page.locator(`[data-testid=${testId}]`).textContent()) ?? ""

const statusOf = (page: Page) =>
  page.locator("[data-testid=connection-status]").getAttribute("data-status", { timeout: 5_000 })

/** The access token of the session the page keeps (per tab, in sessionStorage). */
const accessTokenOf = (page: Page) =>
  page.evaluate(() => JSON.parse(sessionStorage.getItem("harmony.session")!).accessToken as string)

const showsMessage = async (page: Page, body: string) => (await bodiesOn(page)).includes(body)

const expectContiguous = (seqs: ReadonlyArray<number>, last: number) => {
  expect(seqs).toEqual(Array.from({ length: last }, (_, i) => i + 1))
}

describe("web client (chromium)", () => {
  let harmony: Harmony | undefined
  let dataDir: string
  let browser: Browser | undefined
  const contexts: Array<BrowserContext> = []
  let alice: Page
  let bob: Page
  let chatId: string
  /** Uncaught exceptions in either page: there must be none. */
  const pageErrors: Array<string> = []

  /** Alice's page is in the light theme, bob's in the dark one. */
  const openPage = async (who: string, colorScheme: "light" | "dark") => {
    const context = await browser!.newContext({ viewport: { width: 1180, height: 760 }, colorScheme })
    contexts.push(context)
    const page = await context.newPage()
    page.setDefaultTimeout(waitMs)
    page.on("pageerror", (error) => pageErrors.push(`${who}: ${error.message}`))
    return page
  }

  /** On a failed step: both pages as they were, and the server's last words. */
  const onFailure = () =>
    onTestFailed(async ({ task }) => {
      const step = task.name.replace(/[^a-z0-9]+/gi, "-").toLowerCase()
      for (const [who, page] of [
        ["alice", alice],
        ["bob", bob]
      ] as const) {
        await page?.screenshot({ path: join(screenshots, `failed-${step}-${who}.png`) }).catch(() => {})
      }
      console.error(`harmony logs (last 4000 characters):\n${harmony?.logs().slice(-4000) ?? "(not running)"}`)
    })

  beforeAll(async () => {
    if (!existsSync(chromiumPath)) {
      throw new Error(
        `chromium is not installed at ${chromiumPath}: run \`bash scripts/browser.sh\` (it apt-get installs Debian's chromium), or set CHROMIUM_PATH`
      )
    }
    if (process.env.HARMONY_WEB_BUILT !== "1" || !existsSync(join(repoRoot, "dist", "web", "index.html"))) {
      execFileSync(process.execPath, [join(repoRoot, "scripts", "build-web.mjs")], { cwd: repoRoot, stdio: "pipe" })
    }
    rmSync(screenshots, { recursive: true, force: true })
    mkdirSync(screenshots, { recursive: true })
    dataDir = mkdtempSync(join(tmpdir(), "harmony-browser-"))
    harmony = await startHarmony({ mode: "embedded", dataDir })
    // playwright-core gives every launch a fresh --user-data-dir of its own (it refuses the flag in `args`).
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic"
      ]
    })
    alice = await openPage("alice", "light")
    bob = await openPage("bob", "dark")
  })

  afterAll(async () => {
    for (const context of contexts) await context.close().catch(() => {})
    await browser?.close().catch(() => {})
    await harmony?.stop()
    if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true })
  })

  const signUp = async (page: Page, username: string, displayName: string) => {
    await page.goto(harmony!.url)
    await page.locator("[data-testid=auth-form]").waitFor()
    await shoot(page, `01-sign-in-page-${username.split("-")[0]}`)
    await page.locator("[data-testid=auth-mode-toggle]").click()
    await page.locator("[data-testid=auth-username]").fill(username)
    await page.locator("[data-testid=auth-display-name]").fill(displayName)
    await page.locator("[data-testid=auth-password]").fill(password)
    await page.locator("[data-testid=auth-submit]").click()
    await until(`${username} is signed in`, async () => (await textOf(page, "current-user")).includes(displayName))
    await until(`${username}'s page is connected`, async () => (await statusOf(page)) === "open")
  }

  it("two users sign up in two browser contexts", async () => {
    onFailure()
    await Promise.all([signUp(alice, aliceName, "Alice"), signUp(bob, bobName, "Bob")])
    await shoot(alice, "02-signed-up-alice")
  }, 120_000)

  it("alice creates a group chat with bob; it shows up for bob with an unread count", async () => {
    onFailure()
    await alice.locator("[data-testid=new-chat]").click()
    await alice.locator("[data-testid=new-chat-name]").fill("Project Harmony")
    await alice.locator("[data-testid=user-search]").fill(bobName)
    await alice.locator(`[data-testid=user-result][data-username="${bobName}"]`).click()
    await alice.locator(`[data-testid=selected-member][data-username="${bobName}"]`).waitFor()
    await shoot(alice, "03-new-chat-dialog")
    await alice.locator("[data-testid=new-chat-submit]").click()
    await until("alice sees the new chat open", async () => (await textOf(alice, "chat-title")) === "Project Harmony")
    chatId = (await alice.locator("[data-testid=chat-view]").getAttribute("data-chat-id"))!
    expect(chatId).toBeTruthy()

    await alice.locator("[data-testid=composer-input]").fill("Hi Bob, welcome to the project!")
    await alice.locator("[data-testid=composer-input]").press("Enter")
    await until("alice sees her first message", () => showsMessage(alice, "Hi Bob, welcome to the project!"))

    // Bob's list hears of the chat on his own channel (chat_added); it arrives with one unread message.
    const bobsItem = bob.locator(`[data-testid=chat-item][data-chat-id="${chatId}"]`)
    await until(
      "bob's list shows the chat with 1 unread",
      async () => (await bobsItem.getAttribute("data-unread")) === "1"
    )
    expect(await bobsItem.locator("[data-testid=chat-unread]").textContent()).toBe("1")
    await shoot(bob, "04-bob-unread")
  }, 120_000)

  it("they exchange messages, see each other typing and read receipts", async () => {
    onFailure()
    await bob.locator(`[data-testid=chat-item][data-chat-id="${chatId}"]`).click()
    await until("bob sees alice's message", () => showsMessage(bob, "Hi Bob, welcome to the project!"))
    await until(
      "bob's unread count clears",
      async () =>
        (await bob.locator(`[data-chat-id="${chatId}"][data-testid=chat-item]`).getAttribute("data-unread")) === "0"
    )
    // Bob has the chat open and visible: alice sees that he read her message.
    await until("alice sees bob's read receipt", async () =>
      (await alice.locator("[data-testid=read-receipt]").allTextContents()).some((text) => text.includes("Seen by Bob"))
    )

    // Typing: while bob types (slowly, not sending yet), alice sees it.
    const seesTyping = async () => (await textOf(alice, "typing-indicator")).includes("is typing")
    await Promise.all([
      bob.locator("[data-testid=composer-input]").pressSequentially("Thanks Alice! Glad to", { delay: 120 }),
      until("alice sees bob typing", async () => {
        if (!(await seesTyping())) return false
        await shoot(alice, "05-alice-sees-bob-typing")
        return true
      })
    ])
    await bob.locator("[data-testid=composer-input]").pressSequentially(" be here.", { delay: 20 })
    await bob.locator("[data-testid=composer-send]").click()
    await until("alice sees bob's reply", () => showsMessage(alice, "Thanks Alice! Glad to be here."))
    await until(
      "the typing indicator goes away with the message",
      async () => !(await textOf(alice, "typing-indicator")).includes("is typing")
    )

    // Alice answers; bob, who has it open, reads it, and alice sees the receipt under it.
    await alice.locator("[data-testid=composer-input]").fill("Let's ship the web client today.")
    await alice.locator("[data-testid=composer-input]").press("Enter")
    await until("bob sees alice's answer", () => showsMessage(bob, "Let's ship the web client today."))
    // Bob never searched for alice: her name comes from a lookup by id.
    await until(
      "bob sees alice's name on her message",
      async () => (await bob.locator("[data-testid=message-author]").last().textContent()) === "Alice"
    )
    await until("alice sees the receipt under her newest message", async () => {
      const last = alice.locator("[data-testid=message]").last()
      return (
        (await last.locator("[data-testid=message-body]").textContent()) === "Let's ship the web client today." &&
        ((await last.locator("[data-testid=read-receipt]").textContent({ timeout: 1_000 })) ?? "").includes(
          "Seen by Bob"
        )
      )
    })
    expect(await seqsOn(alice)).toEqual([1, 2, 3])
    await until("bob shows the same three", async () => (await seqsOn(bob)).join() === "1,2,3")
    await shoot(alice, "06-alice-conversation-with-receipt")
    await shoot(bob, "06-bob-conversation")
  }, 120_000)

  it("bob searches the messages of his chats: the hit shows the word highlighted and opens its chat", async () => {
    onFailure()
    await bob.locator("[data-testid=message-search]").fill("ship")
    const hit = bob.locator(`[data-testid=message-result][data-chat-id="${chatId}"]`)
    await until("bob sees the hit", async () => (await hit.count()) === 1)
    expect(await hit.locator("mark").allTextContents()).toEqual(["ship"])
    expect(await hit.locator(".snippet").textContent()).toBe("Let's ship the web client today.")
    await shoot(bob, "06b-bob-searches-messages")
    await bob.locator("[data-testid=message-search]").fill("nowordlikethis")
    await until("no hits for a word nobody sent", async () =>
      (await textOf(bob, "message-results")).includes("No messages found")
    )
    await bob.locator("[data-testid=message-search]").fill("ship")
    await until("the hit is back", async () => (await hit.count()) === 1)
    await hit.click()
    await until("the hit's chat is open", () =>
      bob.evaluate((id) => location.hash === `#chat=${encodeURIComponent(id)}`, chatId)
    )
    expect(await bob.locator("[data-testid=message-search]").inputValue()).toBe("")
  }, 120_000)

  it("alice sees who is online and adds and removes a member", async () => {
    onFailure()
    const bobId = (await bob.locator("[data-testid=current-user]").getAttribute("data-user-id"))!
    const carolName = `carol-${run}`
    const carol = await api(harmony!.url).post("/v1/auth/register", { username: carolName, password })
    expect(carol.status, carol.text).toBe(201)
    const carolId = carol.body.user.id as string

    await alice.locator("[data-testid=members-toggle]").click()
    const panel = alice.locator("[data-testid=members-panel]")
    await until(
      "alice sees bob online",
      async () =>
        (await panel.locator(`[data-testid=member][data-user-id="${bobId}"]`).getAttribute("data-online")) === "true"
    )
    await panel.locator("[data-testid=user-search]").fill(carolName)
    await panel.locator(`[data-testid=user-result][data-username="${carolName}"]`).click()
    const carolRow = panel.locator(`[data-testid=member][data-user-id="${carolId}"]`)
    await carolRow.waitFor()
    expect(await carolRow.getAttribute("data-online")).toBe("false")
    expect(await panel.locator("[data-testid=member]").count()).toBe(3)
    await shoot(alice, "07-alice-members-panel")

    await carolRow.locator("[data-testid=member-remove]").click()
    await carolRow.waitFor({ state: "detached" })
    expect(await panel.locator("[data-testid=member]").count()).toBe(2)
    await alice.locator("[data-testid=members-toggle]").click()
    await panel.waitFor({ state: "detached" })
  }, 120_000)

  it("bob reloads and scrolls back through the full history", async () => {
    onFailure()
    // Enough history for more than one page, sent over HTTP with alice's stored session.
    const token = await accessTokenOf(alice)
    const http = api(harmony!.url)
    for (let i = 1; i <= bulk; i++) {
      const reply = await http.post(
        `/v1/chats/${chatId}/messages`,
        { clientMsgId: randomUUID(), body: `history line ${i}` },
        { token }
      )
      expect(reply.status, reply.text).toBe(202)
    }
    const last = 3 + bulk
    await until("bob sees the last bulk message live", () => showsMessage(bob, `history line ${bulk}`))

    await bob.reload()
    await until("bob's session resumes after the reload", async () => (await statusOf(bob)) === "open")
    await until("bob's reloaded page reopens the chat with the newest message", () =>
      showsMessage(bob, `history line ${bulk}`)
    )
    // Scroll up until the beginning of the chat.
    await until(
      "bob scrolled back to the first message",
      async () => {
        await bob.locator("[data-testid=message-list]").evaluate((list) => {
          list.scrollTop = 0
        })
        return (await bob.locator("[data-testid=history-start]").count()) === 1
      },
      90_000
    )
    const seqs = await seqsOn(bob)
    expectContiguous(seqs, last)
    const bodies = await bodiesOn(bob)
    expect(bodies.slice(0, 3)).toEqual([
      "Hi Bob, welcome to the project!",
      "Thanks Alice! Glad to be here.",
      "Let's ship the web client today."
    ])
    expect(bodies.slice(3)).toEqual(Array.from({ length: bulk }, (_, i) => `history line ${i + 1}`))
    await shoot(bob, "08-bob-history-after-reload")
  }, 180_000)

  it("a search hit older than the loaded page opens its chat at that message", async () => {
    onFailure()
    // A fresh page holds the newest 50 messages; "history line 5" (seq 8) is older than that.
    await bob.reload()
    await until("bob's session resumes after the reload", async () => (await statusOf(bob)) === "open")
    await until("bob's page shows the newest message", () => showsMessage(bob, `history line ${bulk}`))
    const target = 3 + 5
    expect(await seqsOn(bob)).not.toContain(target)
    await bob.locator("[data-testid=message-search]").fill('"line 5"')
    const hit = bob.locator(`[data-testid=message-result][data-seq="${target}"]`)
    await until("bob sees the one hit", async () => (await hit.count()) === 1)
    expect(await hit.locator("mark").allTextContents()).toEqual(["line", "5"])
    expect(await hit.locator(".snippet").textContent()).toBe("history line 5")
    await hit.click()
    const message = bob.locator(`[data-testid=message][data-seq="${target}"]`)
    await until("the message is shown, marked", async () => (await message.getAttribute("data-focused")) === "true")
    expect(await message.locator("[data-testid=message-body]").textContent()).toBe("history line 5")
    // In view inside the message list, not merely in the page.
    await until("the message is scrolled into view", () =>
      message.evaluate((node) => {
        const list = node.closest("[data-testid=message-list]")!.getBoundingClientRect()
        const box = node.getBoundingClientRect()
        return box.top >= list.top && box.bottom <= list.bottom
      })
    )
    // The timeline is whole again: what lay between the hit and the newest page was fetched.
    await until("the timeline is contiguous up to the newest message", async () => {
      const seqs = await seqsOn(bob)
      return seqs.at(-1) === 3 + bulk && seqs.every((seq, i) => i === 0 || seq === seqs[i - 1]! + 1)
    })
    await shoot(bob, "08b-bob-jumps-to-a-search-hit")
  }, 120_000)

  it("after a server restart both pages reconnect by themselves; nothing is lost or doubled", async () => {
    onFailure()
    const before = 3 + bulk
    const { port } = harmony!
    const stopped = await harmony!.stop("SIGTERM")
    expect(stopped.code, harmony!.logs().slice(-2000)).toBe(0)
    await until("both pages notice the server is gone", async () =>
      (await Promise.all([statusOf(alice), statusOf(bob)])).every((status) => status !== "open")
    )
    // Alice writes while the server is down: it waits, then goes through once.
    await alice.locator("[data-testid=composer-input]").fill("Sent while the server was down")
    await alice.locator("[data-testid=composer-input]").press("Enter")
    await alice.locator("[data-testid=pending-message]").waitFor()
    await shoot(alice, "09-alice-reconnecting")

    harmony = await startHarmony({ mode: "embedded", dataDir, port })
    await until("both pages are connected again", async () =>
      (await Promise.all([statusOf(alice), statusOf(bob)])).every((status) => status === "open")
    )
    await until("bob gets the message alice wrote while the server was down", () =>
      showsMessage(bob, "Sent while the server was down")
    )
    await bob.locator("[data-testid=composer-input]").fill("Back online, got it")
    await bob.locator("[data-testid=composer-input]").press("Enter")
    await alice.locator("[data-testid=composer-input]").fill("Me too")
    await alice.locator("[data-testid=composer-input]").press("Enter")
    for (const page of [alice, bob]) {
      await until("both post-restart messages arrive", async () => {
        const bodies = await bodiesOn(page)
        return bodies.includes("Back online, got it") && bodies.includes("Me too")
      })
      await until(
        "no message is left pending",
        async () => (await page.locator("[data-testid=pending-message]").count()) === 0
      )
    }
    await sleep(1_500) // anything doubled would have arrived by now

    for (const page of [alice, bob]) {
      const seqs = await seqsOn(page)
      const bodies = await bodiesOn(page)
      expect(new Set(seqs).size, `seqs shown twice: ${seqs}`).toBe(seqs.length)
      expect(seqs.at(-1)).toBe(before + 3)
      // Each page shows a contiguous run up to the newest message.
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => seqs[0]! + i))
      for (const body of ["Sent while the server was down", "Back online, got it", "Me too"]) {
        expect(
          bodies.filter((text) => text === body),
          body
        ).toHaveLength(1)
      }
    }
    // The server stored each of them exactly once too.
    const token = await accessTokenOf(bob)
    const stored = await api(harmony.url).get(`/v1/chats/${chatId}/messages?after=${before}&limit=100`, { token })
    expect(stored.status, stored.text).toBe(200)
    expect(stored.body.messages.map((m: { seq: number }) => m.seq)).toEqual([before + 1, before + 2, before + 3])
    await shoot(alice, "10-alice-after-restart")
    await shoot(bob, "10-bob-after-restart")
  }, 180_000)

  it("bob signs out and back in, then starts a direct chat with alice", async () => {
    onFailure()
    await bob.locator("[data-testid=logout]").click()
    await bob.locator("[data-testid=auth-form]").waitFor()
    expect(await bob.evaluate(() => sessionStorage.getItem("harmony.session"))).toBeNull()
    await bob.locator("[data-testid=auth-username]").fill(bobName)
    await bob.locator("[data-testid=auth-password]").fill(password)
    await bob.locator("[data-testid=auth-submit]").click()
    await until("bob is signed in again", async () => (await textOf(bob, "current-user")).includes("Bob"))
    await until(
      "bob's list has the group, all read",
      async () =>
        (await bob.locator(`[data-testid=chat-item][data-chat-id="${chatId}"]`).getAttribute("data-unread")) === "0"
    )

    await bob.locator("[data-testid=new-chat]").click()
    await bob.locator("[data-testid=new-chat-kind-direct]").click()
    await bob.locator("[data-testid=user-search]").fill(aliceName)
    await bob.locator(`[data-testid=user-result][data-username="${aliceName}"]`).click()
    await bob.locator("[data-testid=new-chat-submit]").click()
    await until(
      "bob's direct chat is open, named after alice",
      async () => (await textOf(bob, "chat-title")) === "Alice"
    )
    const directId = (await bob.locator("[data-testid=chat-view]").getAttribute("data-chat-id"))!
    expect(directId).not.toBe(chatId)
    await bob.locator("[data-testid=composer-input]").fill("Psst, a direct message")
    await bob.locator("[data-testid=composer-input]").press("Enter")

    const alicesItem = alice.locator(`[data-testid=chat-item][data-chat-id="${directId}"]`)
    await until(
      "the direct chat reaches alice with 1 unread",
      async () => (await alicesItem.getAttribute("data-unread")) === "1"
    )
    // The title comes from the chat's members and bob's profile, fetched after the list shows the chat.
    await until(
      "alice's list names the direct chat after bob",
      async () => (await alicesItem.locator("[data-testid=chat-name]").textContent()) === "Bob"
    )
    await alicesItem.click()
    await until("alice reads the direct message", () => showsMessage(alice, "Psst, a direct message"))
    await until("alice's unread count clears", async () => (await alicesItem.getAttribute("data-unread")) === "0")
    await shoot(alice, "11-alice-direct-chat")
  }, 120_000)

  it("alice edits, reacts to and deletes messages; bob sees each change live, and the same after a reload", async () => {
    onFailure()
    for (const page of [alice, bob]) {
      await page.locator(`[data-testid=chat-item][data-chat-id="${chatId}"]`).click()
      await until("the group is open", async () => (await textOf(page, "chat-title")) === "Project Harmony")
    }
    const send = async (page: Page, body: string) => {
      await page.locator("[data-testid=composer-input]").fill(body)
      await page.locator("[data-testid=composer-input]").press("Enter")
      for (const other of [alice, bob]) await until(`"${body}" arrives`, () => showsMessage(other, body))
      const seq = await page
        .locator("[data-testid=message]", { has: page.locator("[data-testid=message-body]", { hasText: body }) })
        .getAttribute("data-seq")
      return Number(seq)
    }
    const messageAt = (page: Page, seq: number) => page.locator(`[data-testid=message][data-seq="${seq}"]`)
    const bodyAt = async (page: Page, seq: number) =>
      (await messageAt(page, seq).locator("[data-testid=message-body]").textContent({ timeout: 1_000 })) ?? ""
    /** The reaction chips under a message: "emoji count" and whether they are the viewer's own ("+"). */
    const reactionsAt = (page: Page, seq: number) =>
      messageAt(page, seq)
        .locator("[data-testid=reaction]")
        .evaluateAll((nodes) =>
          nodes.map(
            (node) =>
              `${node.getAttribute("data-emoji")} ${node.getAttribute("data-count")}${node.getAttribute("data-me") === "true" ? "+" : ""}`
          )
        )
    const react = async (page: Page, seq: number, emoji: string) => {
      await messageAt(page, seq).hover()
      await messageAt(page, seq).locator("[data-testid=message-react]").click()
      await messageAt(page, seq).locator(`[data-testid=reaction-pick][data-emoji="${emoji}"]`).click()
    }
    const remove = async (page: Page, seq: number) => {
      page.once("dialog", (dialog) => void dialog.accept())
      await messageAt(page, seq).hover()
      await messageAt(page, seq).locator("[data-testid=message-delete]").click()
    }

    const kept = await send(alice, "Edits and reactions ship tday")
    const mistake = await send(bob, "Oops, wrong chat")
    // Bob may neither edit nor delete alice's message; alice, the owner, may delete bob's but not edit it.
    expect(await messageAt(bob, kept).locator("[data-testid=message-edit]").count()).toBe(0)
    expect(await messageAt(bob, kept).locator("[data-testid=message-delete]").count()).toBe(0)
    expect(await messageAt(alice, mistake).locator("[data-testid=message-edit]").count()).toBe(0)
    expect(await messageAt(alice, mistake).locator("[data-testid=message-delete]").count()).toBe(1)

    // Alice fixes her typo in the inline editor.
    await messageAt(alice, kept).hover()
    await messageAt(alice, kept).locator("[data-testid=message-edit]").click()
    await alice.locator("[data-testid=message-editor-input]").fill("Edits and reactions ship today")
    await shoot(alice, "12-alice-edits")
    await alice.locator("[data-testid=message-editor-input]").press("Enter")
    await alice.locator("[data-testid=message-editor]").waitFor({ state: "detached" })
    for (const page of [alice, bob]) {
      await until("the edit shows", async () => (await bodyAt(page, kept)) === "Edits and reactions ship today")
      await messageAt(page, kept).locator("[data-testid=message-edited]").waitFor()
    }

    // Reactions: alice's own shows highlighted for her, not for bob; bob joins in and takes his back.
    await react(alice, kept, "🎉")
    await until("bob sees alice's reaction", async () => (await reactionsAt(bob, kept)).join() === "🎉 1")
    await until("alice's own reaction is highlighted", async () => (await reactionsAt(alice, kept)).join() === "🎉 1+")
    await react(bob, kept, "🎉")
    await until("bob's joins it", async () => (await reactionsAt(bob, kept)).join() === "🎉 2+")
    await until("alice sees two", async () => (await reactionsAt(alice, kept)).join() === "🎉 2+")
    await messageAt(bob, kept).locator('[data-testid=reaction][data-emoji="🎉"]').click()
    await until("bob took his back", async () => (await reactionsAt(alice, kept)).join() === "🎉 1+")
    await react(alice, kept, "👍")
    await until("bob sees alice's second reaction", async () => (await reactionsAt(bob, kept)).join() === "🎉 1,👍 1")
    await shoot(bob, "13-bob-sees-edit-and-reactions")

    // The owner deletes bob's message: a tombstone for both.
    await remove(alice, mistake)
    for (const page of [alice, bob]) {
      await messageAt(page, mistake).locator("[data-testid=message-tombstone]").waitFor()
      expect(await messageAt(page, mistake).getAttribute("data-deleted")).toBe("true")
    }
    // Alice deletes a message of her own that has a reaction: its reactions go with it.
    const gone = await send(alice, "This one will go")
    await react(bob, gone, "😮")
    await until("alice sees bob's reaction", async () => (await reactionsAt(alice, gone)).join() === "😮 1")
    await remove(alice, gone)
    await until("bob sees the tombstone without reactions", async () => {
      const message = messageAt(bob, gone)
      return (
        (await message.locator("[data-testid=message-tombstone]").count()) === 1 &&
        (await message.locator("[data-testid=reaction]").count()) === 0
      )
    })
    await shoot(bob, "14-bob-sees-deletes")

    // After a reload bob's page shows the same, from history. The seqs history skips are changes, not
    // holes to fill: one page of it is all the page asks for (a refill would come again and again).
    const historyCalls: Array<string> = []
    const onRequest = (request: { method(): string; url(): string }) => {
      if (request.method() === "GET" && request.url().includes(`/v1/chats/${chatId}/messages`)) {
        historyCalls.push(request.url())
      }
    }
    bob.on("request", onRequest)
    await bob.reload()
    await until("bob's session resumes after the reload", async () => (await statusOf(bob)) === "open")
    await until(
      "bob's reloaded page shows the edit",
      async () => (await bodyAt(bob, kept)) === "Edits and reactions ship today"
    )
    await messageAt(bob, kept).locator("[data-testid=message-edited]").waitFor()
    expect(await reactionsAt(bob, kept)).toEqual(["🎉 1", "👍 1"])
    for (const seq of [mistake, gone]) {
      await messageAt(bob, seq).locator("[data-testid=message-tombstone]").waitFor()
      expect(await messageAt(bob, seq).locator("[data-testid=message-body]").count()).toBe(0)
      expect(await messageAt(bob, seq).locator("[data-testid=reaction]").count()).toBe(0)
    }
    // The changes' seqs count as read once seen: nothing is left unread.
    await until(
      "bob's list shows the group all read",
      async () =>
        (await bob.locator(`[data-testid=chat-item][data-chat-id="${chatId}"]`).getAttribute("data-unread")) === "0"
    )
    // Bob reacts after the reload: his page knew the count from history and adds to it.
    await react(bob, kept, "👍")
    for (const [page, shown] of [
      [bob, "🎉 1,👍 2+"],
      [alice, "🎉 1+,👍 2+"]
    ] as const) {
      await until("the reaction after the reload counts", async () => (await reactionsAt(page, kept)).join() === shown)
    }
    // What bob did himself is not unread for him: his page told the server so (it counts every seq).
    const bobsToken = await accessTokenOf(bob)
    await until("the server has bob's group read up to his own reaction", async () => {
      const list = await api(harmony!.url).get("/v1/me/chats", { token: bobsToken })
      const group = (list.body.chats as Array<{ id: string; lastSeq: number; lastReadSeq: number }>).find(
        (chat) => chat.id === chatId
      )
      return group !== undefined && group.lastSeq === group.lastReadSeq
    })
    bob.off("request", onRequest)
    expect(historyCalls.length, historyCalls.join("\n")).toBeLessThanOrEqual(2)
    await shoot(bob, "15-bob-after-reload")
  }, 180_000)

  it("no page threw an uncaught exception", () => {
    expect(pageErrors).toEqual([])
  })
})
