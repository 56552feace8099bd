// parley-bench: a load generator for the relay (fan-out, chat, ingest, connections,
// reconnect storm, and a raw WebSocket pub/sub baseline). See `parley-bench help`.
import Foundation

func log(_ options: BenchOptions) -> (String) -> Void {
    { line in
        if !options.quiet { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }
}

/// The options that shape the scenario, for the report.
func parameters(_ options: BenchOptions) -> [(String, String)] {
    var list: [(String, String)] = []
    func add(_ name: String, _ value: Any) {
        // Whole numbers without a fraction, so the JSON has integers where it can.
        if let number = value as? Double, number == number.rounded(), abs(number) < 1e15 {
            list.append((name, "\(Int(number))"))
        } else {
            list.append((name, "\(value)"))
        }
    }
    switch options.scenario {
    case .fanout, .rawFanout: add("subscribers", options.subscribers)
    case .chat: add("members", options.members); add("channels", options.channels)
    case .ingest: add("senders", options.senders); add("channels", options.channels)
    case .connections: add("count", options.count)
    case .reconnect:
        add("subscribers", options.subscribers); add("channels", options.channels)
        add("before", options.before); add("after", options.after)
    }
    if options.scenario != .connections {
        add("rate", options.rate)
        if options.rate == 0 { add("inflight", options.inflight) }
        add("size", options.size)
        if options.scenario != .reconnect { add("duration", options.duration) }
        if options.warmup > 0 { add("warmup", options.warmup) }
    } else {
        add("hold", options.duration)
    }
    if let users = options.users { add("users", users) }
    if let subscriberURL = options.subscriberURL {
        add("subscriber_url", subscriberURL.absoluteString)
        if options.scenario == .chat { add("connections_per_member", 2) }
    }
    add("threads", options.threads)
    add("event_loop", options.eventLoop.rawValue)
    if options.sourceAddresses > 1 { add("source_addresses", options.sourceAddresses) }
    return list
}

/// The relay's resident memory: its process and any children (nginx workers), not PostgreSQL;
/// with several relay nodes, all of them.
func relayResidentBytes(_ options: BenchOptions, _ report: Report) -> Int? {
    options.relayPIDs.isEmpty ? nil : ProcessStats.treeResidentBytes(roots: options.relayPIDs, excluding: report.postgresPIDs)
}

func run(_ options: BenchOptions) async -> Report {
    let say = log(options)
    var report = Report(scenario: options.scenario)
    report.parameters = parameters(options)
    report.relayPIDs = options.relayPIDs
    if options.scenario != .connections && options.scenario != .rawFanout {
        report.notes.append("message payloads are opaque bytes of the requested size (a bench header and random filler) with unique IVs, not AES-GCM ciphertexts: the relay never decrypts, so it cannot tell")
    }

    let topology: Topology
    let settings: RunSettings
    do {
        topology = try Topology.make(options)
        settings = RunSettings(
            runTag: UInt32.random(in: 1...UInt32.max), payload: try BenchPayload(size: options.size),
            connectConcurrency: options.connectConcurrency,
            rxBufferSize: options.scenario == .connections ? 0 : 16_384,
            useLibuv: options.eventLoop == .libuv)
    } catch {
        report.setupFailure = "\(error)"
        return report
    }
    let limit = ProcessStats.raiseFileLimit(to: topology.connections.count + 1024)
    if limit < topology.connections.count + 64 {
        report.notes.append("open-file limit \(limit) is below the \(topology.connections.count) connections asked for")
    }

    let provisioned: Provisioned
    do {
        provisioned = try await topology.provision(options, runTag: settings.runTag, log: say)
    } catch {
        report.setupFailure = "\(error)"
        return report
    }
    let plans = topology.peerPlans(options, provisioned: provisioned)
    report.connectionsRequested = plans.count

    let runner: Runner
    do {
        runner = try Runner(options: options, settings: settings, log: say)
    } catch {
        report.setupFailure = "\(error)"
        return report
    }
    report.postgresPIDs = !options.postgresPIDs.isEmpty
        ? options.postgresPIDs : options.relayPIDs.first.map(ProcessStats.postmasters(of:)) ?? []
    report.relayRSSBefore = relayResidentBytes(options, report)

    // Connect everyone: auth, subscribe.
    let connectStart = Clock.now()
    var cpu = CPUSampler(relays: options.relayPIDs, postgres: report.postgresPIDs)
    var cpuStart = connectStart
    runner.open(plans, settings: settings)
    let connected = runner.waitUntilReady(timeout: options.connectTimeout)
    report.connectionsHeld = connected.ready
    if connected.lastFirstReady > connectStart {
        report.connectSeconds = Double(connected.lastFirstReady - connectStart) / 1e9
    }
    say(String(format: "connected: %d of %d ready in %.2f s", connected.ready, plans.count, Clock.seconds(since: connectStart)))
    if connected.ready < plans.count && options.scenario != .connections {
        report.setupFailure = "\(plans.count - connected.ready) of \(plans.count) connections not ready"
            + (connected.firstErrors.isEmpty ? "" : ": " + connected.firstErrors.joined(separator: "; "))
        report.recorder = runner.finish()
        return report
    }

    switch options.scenario {
    case .connections:
        runner.run(for: options.duration, label: "holding")
        let held = runner.snapshot()
        report.connectionsHeld = min(held.ready, held.open)
        report.relayRSSAfter = relayResidentBytes(options, report)

    case .reconnect:
        cpu = CPUSampler(relays: options.relayPIDs, postgres: report.postgresPIDs)
        cpuStart = Clock.now()
        let start = Clock.now() + 20_000_000
        runner.startSending(start: start, measureFrom: start)
        runner.run(for: options.before, label: "before")
        let dropAt = Clock.now()
        say("dropping every subscriber")
        runner.dropSubscribers()
        let caughtUp = runner.waitUntilCaughtUp(since: dropAt, timeout: options.connectTimeout)
        report.reconnect = Report.Reconnect(syncedSeconds: caughtUp?.synced, caughtUpSeconds: caughtUp?.live)
        say(caughtUp.map { String(format: "caught up: synced after %.3f s, live after %.3f s", $0.synced, $0.live) }
            ?? "caught up: timed out")
        runner.run(for: options.after, label: "after")
        runner.stopSending()
        report.measuredSeconds = Clock.seconds(since: start)
        let drained = runner.drain(timeout: options.drainTimeout)
        (report.lost, report.drainSeconds, report.unanswered) = drained
        report.connectionsHeld = runner.snapshot().ready

    case .fanout, .chat, .ingest, .rawFanout:
        cpu = CPUSampler(relays: options.relayPIDs, postgres: report.postgresPIDs)
        cpuStart = Clock.now()
        let start = Clock.now() + 20_000_000
        let measureFrom = start + UInt64(options.warmup * 1e9)
        runner.startSending(start: start, measureFrom: measureFrom)
        if options.warmup > 0 { runner.run(for: options.warmup, label: "warm-up") }
        runner.run(for: options.duration, label: "run")
        runner.stopSending()
        report.measuredSeconds = Clock.seconds(since: measureFrom)
        report.connectionsHeld = runner.snapshot().ready
        let drained = runner.drain(timeout: options.drainTimeout)
        (report.lost, report.drainSeconds, report.unanswered) = drained
    }

    let used = cpu.elapsed()
    report.cpu = Report.CPU(relay: used.relay, relayEach: used.relayEach, postgres: used.postgres, bench: used.bench,
                            seconds: Clock.seconds(since: cpuStart))
    if report.relayRSSAfter == nil { report.relayRSSAfter = relayResidentBytes(options, report) }
    report.recorder = runner.finish()
    return report
}

let options: BenchOptions
do {
    guard let parsed = try BenchOptions.parse(Array(CommandLine.arguments.dropFirst())) else {
        print(usage, terminator: "")
        exit(0)
    }
    options = parsed
} catch {
    FileHandle.standardError.write(Data("parley-bench: \(error)\nrun `parley-bench help` for the options\n".utf8))
    exit(64)
}

let report = await run(options)
print(report.table())
if let path = options.jsonPath {
    do {
        try Data(report.json()).write(to: URL(fileURLWithPath: path))
    } catch {
        FileHandle.standardError.write(Data("parley-bench: cannot write \(path): \(error)\n".utf8))
    }
}
exit(report.setupFailure != nil ? 2 : report.failed ? 1 : 0)
