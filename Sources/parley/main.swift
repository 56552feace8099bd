// parley: the command-line client on the ParleyClient SDK. One command per run: it reads
// the identity file, signs in with the stored session (or the passkey when the session
// ended), does the command and exits. Secrets are never printed, except the passkey once
// at signup (it is shown once by design).
import Foundation
import ParleyClient
import ParleyCrypto
import ParleyProtocol

let usage = """
    usage: parley [global options] <command> [arguments]

    commands:
      signup <username>                  create an account (prints the passkey ONCE)
      login <username> --passkey P       new session with the passkey (key from the identity file)
      whoami                             the signed-in account
      channels                           the channels you are in
      create <name> [usernames...]       create a channel with these members
      add <channel> <username>           add a member (owner only)
      remove <channel> <username>        remove a member (owner only)
      leave <channel>                    leave a channel
      members <channel>                  members, roles and key fingerprints
      send <channel> <text...>           send a message
      history <channel> [--after N] [--limit N]
                                         messages, decrypted and verified
      tail <channel> [--after N]         follow new messages (resumes across reconnects)
      rotate <channel>                   rotate the channel key
      fingerprint [username]             key fingerprint (yours, or a user's, pinned on first sight)

    a <channel> is a channel id or a channel name.

    global options:
      --server URL       relay (default $PARLEY_SERVER or ws://127.0.0.1:8080/ws)
      --identity FILE    identity file (default $PARLEY_IDENTITY or ~/.config/parley/identity.json)
      --ca FILE          CA certificate of a wss:// relay
      --json             machine-readable output (one JSON value; tail: one per line)
      -h, --help         this text

    exit codes: 0 ok, 1 error, 64 usage

    """

struct UsageError: Error { let message: String }
struct Failure: Error { let message: String }

func printErr(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

func jsonLine(_ value: Any) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes]) else {
        return "null"
    }
    return String(decoding: data, as: UTF8.self)
}

struct Global {
    var server = ProcessInfo.processInfo.environment["PARLEY_SERVER"] ?? "ws://127.0.0.1:8080/ws"
    var identity: String = {
        if let path = ProcessInfo.processInfo.environment["PARLEY_IDENTITY"], !path.isEmpty { return path }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".config/parley/identity.json").path
    }()
    var ca: String?
    var json = false
}

/// Splits the command line into global options, the command's words and its flags.
struct Arguments {
    var global = Global()
    var words: [String] = []
    var flags: [String: String] = [:]

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        func value(_ flag: String) throws -> String {
            guard let next = rest.popFirst() else { throw UsageError(message: "\(flag) needs a value") }
            return next
        }
        var literal = false
        while let argument = rest.popFirst() {
            if literal { words.append(argument); continue }
            switch argument {
            case "--": literal = true
            case "-h", "--help": words.insert("help", at: 0)
            case "--server": global.server = try value(argument)
            case "--identity": global.identity = try value(argument)
            case "--ca": global.ca = try value(argument)
            case "--json": global.json = true
            case "--passkey", "--after", "--limit": flags[argument] = try value(argument)
            default:
                if argument.hasPrefix("--") { throw UsageError(message: "unknown option \(argument)") }
                words.append(argument)
            }
        }
    }

    func int(_ flag: String) throws -> Int? {
        guard let text = flags[flag] else { return nil }
        guard let value = Int(text), value >= 0 else { throw UsageError(message: "\(flag) needs a non-negative number") }
        return value
    }
}

// MARK: - The session

struct Session {
    let client: ParleyClient
    let me: Identity
    let json: Bool

    static func client(_ global: Global) throws -> ParleyClient {
        guard let url = URL(string: global.server), ["ws", "wss"].contains(url.scheme ?? "") else {
            throw UsageError(message: "--server must be a ws:// or wss:// URL")
        }
        var configuration = ClientConfiguration()
        configuration.pins = try KeyPinStore(file: IdentityFile.pinsURL(for: URL(fileURLWithPath: global.identity)))
        return ParleyClient(url: url, caFile: global.ca, configuration: configuration)
    }

    /// Signs in with the identity file: its session, or its passkey when the session ended.
    static func open(_ global: Global) async throws -> Session {
        let url = URL(fileURLWithPath: global.identity)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw Failure(message: "no identity at \(global.identity): run `parley signup <username>` first (or pass --identity)")
        }
        let stored = try IdentityFile.read(from: url)
        let client = try client(global)
        do {
            let me = try await client.auth(identity: stored)
            return Session(client: client, me: me, json: global.json)
        } catch ClientError.sessionEnded {
            guard let passkey = stored.passkey else {
                throw Failure(message: "the session ended; run `parley login \(stored.username) --passkey P`")
            }
            let me = try await client.login(username: stored.username, passkey: passkey, key: stored.privateKey)
            try IdentityFile.write(me, to: url)
            return Session(client: client, me: me, json: global.json)
        }
    }

    /// A channel named by id or by name.
    func channel(_ text: String) async throws -> ChannelSummary {
        let list = try await client.channels()
        if let id = ID(text), let found = list.first(where: { $0.channelID == id }) { return found }
        let named = list.filter { $0.name == text }
        if named.count == 1 { return named[0] }
        if named.count > 1 {
            throw Failure(message: "\(named.count) channels are named \(text); use an id: " + named.map(\.channelID.string).joined(separator: ", "))
        }
        throw Failure(message: "no channel \(text) among yours (see `parley channels`)")
    }

    func userID(_ username: String) async throws -> ID {
        try await client.user(named: username).userID
    }
}

actor Names {
    let client: ParleyClient
    var known: [ID: String] = [:]
    init(client: ParleyClient) { self.client = client }
    func name(_ id: ID) async -> String {
        if let name = known[id] { return name }
        let name = (try? await client.user(id: id).username) ?? id.string
        known[id] = name
        return name
    }
}

func timeText(_ seconds: Int) -> String {
    let formatter = DateFormatter()
    formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
    return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
}

func messageObject(_ message: DecryptedMessage, sender: String) -> [String: Any] {
    var object: [String: Any] = [
        "channel_id": message.channelID.string, "seq": message.seq, "sender_id": message.senderID.string,
        "sender": sender, "ts": message.ts, "received_at": message.receivedAt, "key_id": message.keyID.string,
    ]
    switch message.content {
    case .text(let text): object["text"] = text; object["verified"] = true
    case .unverifiable(let reason): object["error"] = reason; object["verified"] = false
    }
    return object
}

func messageLine(_ message: DecryptedMessage, sender: String) -> String {
    switch message.content {
    case .text(let text): return "#\(message.seq) \(timeText(message.ts)) \(sender): \(text)"
    case .unverifiable(let reason): return "#\(message.seq) \(timeText(message.ts)) \(sender): [UNVERIFIABLE: \(reason)]"
    }
}

// MARK: - Commands

func need(_ words: [String], _ count: ClosedRange<Int>, _ form: String) throws {
    guard count.contains(words.count - 1) else { throw UsageError(message: "usage: parley \(form)") }
}

func run(_ arguments: Arguments) async throws {
    let words = arguments.words
    let global = arguments.global
    let json = global.json
    guard let command = words.first else { throw UsageError(message: "no command given") }
    func out(_ human: String, _ object: @autoclosure () -> Any) {
        print(json ? jsonLine(object()) : human)
    }

    switch command {
    case "help":
        print(usage, terminator: "")

    case "signup":
        try need(words, 1...1, "signup <username>")
        let url = URL(fileURLWithPath: global.identity)
        if FileManager.default.fileExists(atPath: url.path) {
            throw Failure(message: "\(global.identity) exists already; pass another --identity for a new account")
        }
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let client = try Session.client(global)
        let key = try RSAPrivateKey(generating: .bits2048)
        let me = try await client.signup(username: words[1], key: key)
        try IdentityFile.write(me, to: url)
        await client.close()
        out("""
            signed up as \(me.username) (user \(me.userID.string))
            key fingerprint: \(me.fingerprint)
            identity saved to \(global.identity) (mode 0600)
            passkey (shown ONCE; keep it to log in when the session ends): \(me.passkey ?? "?")
            """,
            ["username": me.username, "user_id": me.userID.string, "fingerprint": me.fingerprint,
             "identity": global.identity, "passkey": me.passkey.map { $0 as Any } ?? NSNull()])
        return

    case "login":
        try need(words, 1...1, "login <username> --passkey P")
        guard let passkey = arguments.flags["--passkey"] else { throw UsageError(message: "usage: parley login <username> --passkey P") }
        let url = URL(fileURLWithPath: global.identity)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw Failure(message: "no identity at \(global.identity): login needs the account's private key from it")
        }
        let stored = try IdentityFile.read(from: url)
        let client = try Session.client(global)
        let me = try await client.login(username: words[1], passkey: passkey, key: stored.privateKey)
        try IdentityFile.write(me, to: url)
        await client.close()
        out("logged in as \(me.username) (user \(me.userID.string)); new session saved to \(global.identity)",
            ["username": me.username, "user_id": me.userID.string])
        return

    default:
        break
    }

    let known = ["whoami", "channels", "create", "add", "remove", "leave", "members", "send", "history", "tail", "rotate", "fingerprint"]
    guard known.contains(command) else { throw UsageError(message: "unknown command \(command)") }
    let session = try await Session.open(global)
    let client = session.client
    defer { Task { await client.close() } }

    switch command {
    case "whoami":
        try need(words, 0...0, "whoami")
        let me = session.me
        out("\(me.username) (user \(me.userID.string))\nkey fingerprint: \(me.fingerprint)\nserver: \(global.server)",
            ["username": me.username, "user_id": me.userID.string, "fingerprint": me.fingerprint, "server": global.server])

    case "channels":
        try need(words, 0...0, "channels")
        let list = try await client.channels()
        if json {
            print(jsonLine(list.map { ["channel_id": $0.channelID.string, "name": $0.name, "role": $0.role.rawValue,
                                       "last_seq": $0.lastSeq, "membership_version": $0.membershipVersion] as [String: Any] }))
        } else if list.isEmpty {
            print("no channels")
        } else {
            for c in list { print("\(c.channelID.string)  \(c.name)  (\(c.role.rawValue), \(c.lastSeq) messages)") }
        }

    case "create":
        try need(words, 1...Int.max, "create <name> [usernames...]")
        var members: [ID] = []
        for username in words.dropFirst(2) { members.append(try await session.userID(username)) }
        let id = try await client.createChannel(name: words[1], members: members)
        out("created \(words[1]) (\(id.string)) with \(([session.me.username] + words.dropFirst(2)).joined(separator: ", "))",
            ["channel_id": id.string, "name": words[1]])

    case "add", "remove":
        try need(words, 2...2, "\(command) <channel> <username>")
        let channel = try await session.channel(words[1])
        let user = try await session.userID(words[2])
        if command == "add" { try await client.add(userID: user, to: channel.channelID) }
        else { try await client.remove(userID: user, from: channel.channelID) }
        out("\(command == "add" ? "added" : "removed") \(words[2]) \(command == "add" ? "to" : "from") \(channel.name)",
            ["channel_id": channel.channelID.string, "username": words[2], "action": command == "add" ? "added" : "removed"])

    case "leave":
        try need(words, 1...1, "leave <channel>")
        let channel = try await session.channel(words[1])
        try await client.leave(channel: channel.channelID)
        out("left \(channel.name)", ["channel_id": channel.channelID.string, "left": true])

    case "members":
        try need(words, 1...1, "members <channel>")
        let channel = try await session.channel(words[1])
        let members = try await client.members(of: channel.channelID)
        if json {
            print(jsonLine(members.map { ["user_id": $0.userID.string, "username": $0.username, "role": $0.role.rawValue,
                                          "fingerprint": $0.fingerprint] as [String: Any] }))
        } else {
            for m in members { print("\(m.username)  \(m.role.rawValue)  \(m.fingerprint)") }
        }

    case "send":
        try need(words, 2...Int.max, "send <channel> <text>")
        let channel = try await session.channel(words[1])
        let sent = try await client.send(text: words.dropFirst(2).joined(separator: " "), to: channel.channelID)
        out("sent #\(sent.seq) to \(channel.name)", ["channel_id": channel.channelID.string, "seq": sent.seq])

    case "history":
        try need(words, 1...1, "history <channel> [--after N] [--limit N]")
        let channel = try await session.channel(words[1])
        let after = try arguments.int("--after"), limit = try arguments.int("--limit")
        let page = try await client.history(of: channel.channelID, after: after, limit: limit)
        let names = Names(client: client)
        var objects: [[String: Any]] = []
        for message in page.messages {
            let sender = await names.name(message.senderID)
            if json { objects.append(messageObject(message, sender: sender)) } else { print(messageLine(message, sender: sender)) }
        }
        if json { print(jsonLine(["messages": objects, "has_more": page.hasMore])) }
        else if let last = page.messages.last {
            if page.hasMore { print("(more: --after \(last.seq))") }
        } else { print("no messages") }

    case "tail":
        try need(words, 1...1, "tail <channel> [--after N]")
        let channel = try await session.channel(words[1])
        let names = Names(client: client)
        let events = client.events
        var positions: [ID: Int] = [:]
        if let after = try arguments.int("--after") { positions[channel.channelID] = after }
        try await client.subscribe(to: [channel.channelID], after: positions)
        if !json { printErr("following \(channel.name); Ctrl-C to stop") }
        for await event in events {
            switch event {
            case .message(let message) where message.channelID == channel.channelID:
                let sender = await names.name(message.senderID)
                let line = json ? jsonLine(messageObject(message, sender: sender)) : messageLine(message, sender: sender)
                FileHandle.standardOutput.write(Data((line + "\n").utf8))   // unbuffered: a pipe sees each line at once
            case .connection(let state):
                if !json { printErr("[\(state)]") }
            case .securityAlert(let alert):
                printErr("SECURITY ALERT: \(alert)")
            case .membership(let id, let user, let action, let by) where id == channel.channelID:
                let who = await names.name(user), signer = await names.name(by)
                if !json { printErr("[\(who) \(action.rawValue) by \(signer)]") }
                if user == session.me.userID, action == .removed { throw Failure(message: "you were removed from \(channel.name)") }
            case .keyRotated(let id, _, let by) where id == channel.channelID:
                if !json { printErr("[key rotated by \(await names.name(by))]") }
            default:
                break
            }
        }
        throw Failure(message: "the connection ended")

    case "rotate":
        try need(words, 1...1, "rotate <channel>")
        let channel = try await session.channel(words[1])
        let keyID = try await client.rotateKey(in: channel.channelID)
        out("rotated the key of \(channel.name): new key \(keyID.string)", ["channel_id": channel.channelID.string, "key_id": keyID.string])

    case "fingerprint":
        try need(words, 0...1, "fingerprint [username]")
        if words.count == 1 || words[1] == session.me.username {
            let me = session.me
            out("\(me.username): \(me.fingerprint)", ["username": me.username, "fingerprint": me.fingerprint])
        } else {
            let info = try await client.user(named: words[1])
            out("\(info.username): \(info.fingerprint) (pinned)", ["username": info.username, "user_id": info.userID.string, "fingerprint": info.fingerprint])
        }

    default:
        throw UsageError(message: "unknown command \(command)")
    }
}

// MARK: - Main

let code: Int32
do {
    let arguments = try Arguments(Array(CommandLine.arguments.dropFirst()))
    if arguments.words.isEmpty {
        FileHandle.standardError.write(Data(usage.utf8))
        code = 64
    } else {
        try await run(arguments)
        code = 0
    }
} catch let error as UsageError {
    printErr("parley: \(error.message)")
    printErr("run `parley --help` for the commands")
    code = 64
} catch let error as Failure {
    printErr("parley: error: \(error.message)")
    code = 1
} catch let error as ClientError {
    printErr("parley: error: \(error)")
    code = 1
} catch {
    printErr("parley: error: \(error)")
    code = 1
}
exit(code)
