// parley-bot: a headless bot on the ParleyClient SDK. Signs up on first run (or loads its
// identity), works in every channel it is in or is added to, and answers !ping, !echo,
// !rotate, !members and !help. Every step is logged on stderr; secrets never are.
import Foundation
import ParleyClient
import ParleyCrypto
import ParleyProtocol

let usage = """
    usage: parley-bot --username NAME [options]

    A headless Parley bot: answers !ping, !echo <text>, !rotate, !members and !help in
    every channel it is in (and every channel it is added to while running).

    options:
      --server URL          relay address (default ws://127.0.0.1:8080/ws)
      --username NAME       the bot's account (signed up on first run)
      --identity FILE       identity file (default ./<username>.identity.json)
      --create NAME         create a channel NAME on start...
      --invite USERNAME     ...with this member (repeatable)
      --say TEXT            send TEXT once after joining the first channel (repeatable)
      --exit-after SECONDS  exit cleanly after this many seconds
      -h, --help            this text

    exit codes: 0 ok, 1 error, 64 usage

    """

func log(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

func usageError(_ message: String) -> Never {
    log("parley-bot: \(message)")
    FileHandle.standardError.write(Data(usage.utf8))
    exit(64)
}

func fail(_ message: String) -> Never {
    log("parley-bot: error: \(message)")
    exit(1)
}

// MARK: - Arguments

struct Options {
    var server = "ws://127.0.0.1:8080/ws"
    var username: String?
    var identity: String?
    var create: String?
    var invite: [String] = []
    var say: [String] = []
    var exitAfter: Double?
}

func parseOptions(_ arguments: [String]) -> Options {
    var options = Options()
    var rest = arguments[...]
    func value(_ flag: String) -> String {
        guard let next = rest.popFirst() else { usageError("\(flag) needs a value") }
        return next
    }
    while let argument = rest.popFirst() {
        switch argument {
        case "-h", "--help":
            print(usage, terminator: "")
            exit(0)
        case "--server": options.server = value(argument)
        case "--username": options.username = value(argument)
        case "--identity": options.identity = value(argument)
        case "--create": options.create = value(argument)
        case "--invite": options.invite.append(value(argument))
        case "--say": options.say.append(value(argument))
        case "--exit-after":
            guard let seconds = Double(value(argument)), seconds > 0 else { usageError("--exit-after needs a positive number") }
            options.exitAfter = seconds
        default: usageError("unknown argument \(argument)")
        }
    }
    if options.username == nil, options.identity == nil { usageError("--username is required") }
    if !options.invite.isEmpty, options.create == nil { usageError("--invite goes with --create") }
    return options
}

// MARK: - The bot

actor Bot {
    let client: ParleyClient
    let me: Identity
    let startedAt: Int
    var pendingSay: [String]
    var joined: Set<ID> = []
    var names: [ID: String] = [:]
    var channelNames: [ID: String] = [:]

    static let help = "commands: !ping → pong, !echo <text> → <text>, !rotate → new channel key, !members → member names, !help → this list"

    init(client: ParleyClient, me: Identity, say: [String]) {
        self.client = client
        self.me = me
        self.pendingSay = say
        self.startedAt = Int(Date().timeIntervalSince1970) - 1
        names[me.userID] = me.username
    }

    func name(_ id: ID) async -> String {
        if let known = names[id] { return known }
        if let info = try? await client.user(id: id) {
            names[id] = info.username
            return info.username
        }
        return id.string
    }

    func channelLabel(_ id: ID) -> String {
        channelNames[id].map { "#\($0)" } ?? "channel \(id.string.prefix(8))"
    }

    /// Subscribes to a channel from seq 0: the SDK replays the backlog (decrypted and
    /// verified), then live messages follow on `events`.
    func join(_ channelID: ID, name: String?) async {
        guard !joined.contains(channelID) else { return }
        joined.insert(channelID)
        if let name { channelNames[channelID] = name }
        if channelNames[channelID] == nil, let list = try? await client.channels() {
            for summary in list { channelNames[summary.channelID] = summary.name }
        }
        do {
            try await client.subscribe(to: [channelID], after: [channelID: 0])
            log("subscribed to \(channelLabel(channelID)): the backlog from seq 0 is replayed, then live messages follow")
        } catch {
            joined.remove(channelID)
            log("cannot subscribe to \(channelLabel(channelID)): \(error)")
            return
        }
        if let members = try? await client.members(of: channelID) {
            for member in members { names[member.userID] = member.username }
            log("membership chain of \(channelLabel(channelID)) verified: \(members.map(\.username).sorted().joined(separator: ", "))")
        }
        await sayPending(in: channelID)
    }

    func sayPending(in channelID: ID) async {
        let lines = pendingSay
        pendingSay = []
        for line in lines {
            await reply(line, in: channelID)
            try? await Task.sleep(nanoseconds: 300_000_000)
        }
    }

    func reply(_ text: String, in channelID: ID) async {
        do {
            let sent = try await client.send(text: text, to: channelID)
            log("sent #\(sent.seq) in \(channelLabel(channelID)): encrypted with key \(sent.keyID.string.prefix(8)), signed with my key: \"\(text)\"")
        } catch {
            log("send in \(channelLabel(channelID)) failed: \(error)")
        }
    }

    func handle(_ event: ClientEvent) async {
        switch event {
        case .connection(let state):
            log("connection: \(state)")
        case .securityAlert(let alert):
            log("SECURITY ALERT: \(alert)")
        case .keyRotated(let channelID, let keyID, let by):
            let who = await name(by)
            log("key \(keyID.string.prefix(8)) of \(channelLabel(channelID)) fetched: signature by \(who)'s pinned key verified, wrapped copy unwrapped with my private key, cached")
        case .membership(let channelID, let userID, let action, let by):
            let who = await name(userID), signer = await name(by)
            log("membership of \(channelLabel(channelID)): \(who) \(action.rawValue) by \(signer) (statement verified as the next link of the chain; the current key expires, the next sender rotates)")
            if userID == me.userID {
                if action == .added {
                    log("I was added to \(channelLabel(channelID)): joining it")
                    await join(channelID, name: nil)
                } else {
                    joined.remove(channelID)
                    log("I was removed from \(channelLabel(channelID))")
                }
            }
        case .message(let message):
            await handle(message)
        }
    }

    func handle(_ message: DecryptedMessage) async {
        let sender = await name(message.senderID)
        let place = channelLabel(message.channelID)
        guard let text = message.text else {
            if case .unverifiable(let reason) = message.content {
                log("message #\(message.seq) in \(place) from \(sender) REFUSED: \(reason)")
            }
            return
        }
        guard message.senderID != me.userID else {
            log("message #\(message.seq) in \(place): my own, delivered back, decrypted and verified")
            return
        }
        log("message #\(message.seq) in \(place): decrypted with key \(message.keyID.string.prefix(8)), signature of \(sender) checked against the pinned key: \(sender): \"\(text)\"")
        guard message.ts >= startedAt else { return }   // commands from before this run are not answered
        await answer(text, from: sender, in: message.channelID)
    }

    func answer(_ text: String, from sender: String, in channelID: ID) async {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("!") else { return }
        let command = trimmed.split(separator: " ", maxSplits: 1).first.map(String.init) ?? trimmed
        let argument = trimmed.dropFirst(command.count).trimmingCharacters(in: .whitespaces)
        switch command {
        case "!ping":
            log("command !ping from \(sender)")
            await reply("pong", in: channelID)
        case "!echo":
            log("command !echo from \(sender)")
            await reply(argument, in: channelID)
        case "!help":
            log("command !help from \(sender)")
            await reply(Self.help, in: channelID)
        case "!members":
            log("command !members from \(sender): reading the verified membership chain")
            do {
                let members = try await client.members(of: channelID)
                let list = members.map { $0.role == .owner ? "\($0.username) (owner)" : $0.username }
                await reply("members: " + list.joined(separator: ", "), in: channelID)
            } catch {
                log("members failed: \(error)")
                await reply("cannot list the members: \(error)", in: channelID)
            }
        case "!rotate":
            log("command !rotate from \(sender): rotating the channel key")
            do {
                let keyID = try await client.rotateKey(in: channelID)
                log("rotation done: new key \(keyID.string.prefix(8)) wrapped for every member of the verified chain, signed by me (asked by \(sender))")
                await reply("rotated the channel key (new key \(keyID.string.prefix(8))), as \(sender) asked", in: channelID)
            } catch {
                log("rotation failed: \(error)")
                await reply("rotation failed: \(error)", in: channelID)
            }
        default:
            log("unknown command \(command) from \(sender)")
        }
    }
}

// MARK: - Start

let options = parseOptions(Array(CommandLine.arguments.dropFirst()))
guard let serverURL = URL(string: options.server), ["ws", "wss"].contains(serverURL.scheme ?? "") else {
    usageError("--server must be a ws:// or wss:// URL")
}
let identityPath = options.identity ?? "./\(options.username!).identity.json"
let identityURL = URL(fileURLWithPath: identityPath)

// Signals: exit cleanly (close the connection) on SIGINT and SIGTERM.
signal(SIGINT, SIG_IGN)
signal(SIGTERM, SIG_IGN)
let signalSources = [SIGINT, SIGTERM].map { number in
    let source = DispatchSource.makeSignalSource(signal: number, queue: .main)
    source.setEventHandler {
        log("signal \(number == SIGINT ? "SIGINT" : "SIGTERM"): exiting")
        exit(0)
    }
    source.resume()
    return source
}

func run() async -> Never {
    let configuration: ClientConfiguration
    do {
        var c = ClientConfiguration()
        c.pins = try KeyPinStore(file: IdentityFile.pinsURL(for: identityURL))
        configuration = c
    } catch {
        fail("cannot open the pin file: \(error)")
    }
    let client = ParleyClient(url: serverURL, configuration: configuration)

    let me: Identity
    do {
        if FileManager.default.fileExists(atPath: identityURL.path) {
            let stored = try IdentityFile.read(from: identityURL)
            if let wanted = options.username, wanted != stored.username {
                fail("\(identityPath) belongs to \(stored.username), not \(wanted)")
            }
            log("loaded identity of \(stored.username) from \(identityPath) (key fingerprint \(stored.fingerprint))")
            do {
                me = try await client.auth(identity: stored)
                log("signed in with the stored session")
            } catch ClientError.sessionEnded {
                guard let passkey = stored.passkey else { fail("the session ended and the identity file has no passkey") }
                log("the session ended: logging in with the passkey (challenge answered with my private key)")
                me = try await client.login(username: stored.username, passkey: passkey, key: stored.privateKey)
                try IdentityFile.write(me, to: identityURL)
            }
        } else {
            let username = options.username!
            log("no identity at \(identityPath): generating an RSA-2048 key and signing up as \(username)")
            let key = try RSAPrivateKey(generating: .bits2048)
            me = try await client.signup(username: username, key: key)
            try IdentityFile.write(me, to: identityURL)
            log("signed up as \(me.username) (user \(me.userID.string.prefix(8)), key fingerprint \(me.fingerprint)); identity saved to \(identityPath) (mode 0600)")
        }
    } catch {
        fail("cannot sign in: \(error)")
    }

    let bot = Bot(client: client, me: me, say: options.say)
    let events = client.events
    Task {
        for await event in events { await bot.handle(event) }
    }

    if let exitAfter = options.exitAfter {
        Task {
            try? await Task.sleep(nanoseconds: UInt64(exitAfter * 1_000_000_000))
            log("--exit-after \(exitAfter)s reached: exiting")
            await client.close()
            exit(0)
        }
    }

    do {
        if let name = options.create {
            var members: [ID] = []
            for username in options.invite {
                let info = try await client.user(named: username)
                log("looked up \(info.username): key fingerprint \(info.fingerprint) pinned")
                members.append(info.userID)
            }
            let channelID = try await client.createChannel(name: name, members: members)
            log("created #\(name) (membership statement v1 signed by me) with \(([me.username] + options.invite).joined(separator: ", "))")
            await bot.join(channelID, name: name)
        }
        let channels = try await client.channels()
        log("member of \(channels.count) channel(s)")
        for summary in channels { await bot.join(summary.channelID, name: summary.name) }
    } catch {
        fail("\(error)")
    }
    log("ready: waiting for commands (\(options.say.isEmpty ? "" : "--say pending until a channel is joined; ")!help lists them)")
    while true { try? await Task.sleep(nanoseconds: 3_600_000_000_000) }
}

Task { await run() }
_ = signalSources
dispatchMain()
