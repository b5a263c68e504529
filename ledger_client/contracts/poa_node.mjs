// BEAT's launcher for one node of a proof-of-authority (Clique) network: the EthereumJS client
// (@ethereumjs/client, pinned in package.json), its own command line (bin/cli.js, the same
// arguments), with these changes made before it starts (ledger_client/poa_network.py runs it;
// docs/ledger.md, "A network of ledger nodes", says why each is needed):
//  - BEAT_POA_NODEKEY: the node's devp2p key (hex), so that its enode is known before it starts;
//  - BEAT_POA_LISTEN: the one address it listens on for peers (the client's is 0.0.0.0);
//  - BEAT_POA_PEERS: static peers (enode URLs), dialled every second while not connected (the
//    node with the higher id, BEAT_POA_NODEID, lets the other dial first), never banned;
//  - BEAT_POA_SEAL_PEERS / BEAT_POA_SETTLE_MS: a sealer starts sealing only once it has that many
//    peers and has had that long to catch up (a restarted sealer does not seal on a stale head);
//    the first block's time then follows the head's timestamp, as on every other sealer;
//  - a sealer builds on the head only once its state is executed (else the client exited);
//  - the branch fetch asks headers and bodies with its own request ids and takes only the answers
//    that carry them, checked against what was asked (the client took the late answer to a
//    request that timed out for the next one: "value for 0x.. not found in DB");
//  - a block whose execution failed is executed again on cleared state caches (a reorganisation
//    left the losing branch's state in them: the node stopped executing for good);
//  - BEAT_POA_OUT_OF_TURN_MIN_MS: an out-of-turn sealer waits that much more than EIP-225's random
//    delay, so that the in-turn block reaches it first;
//  - contract code runs at all on a Clique chain (the EVM gets the Clique signer function it
//    requires), and eth_estimateGas works there (its scratch block has no extraData);
//  - transactions go whole to every peer (announcements by hash did not reach the sealers);
//  - a pooled transaction whose nonce its sender already used is dropped before a block is built
//    (one such leftover held every later transaction of that account out of every block);
//  - eth_getLogs filters on every topic given (it checked the first one only);
//  - new blocks go whole to every peer, a block whose parent is known is put into the blockchain
//    even off the head (the most difficulty wins: a reorganisation), a block whose parent is not
//    known makes the node fetch the missing branch by hash, and every node offers its head to its
//    peers every 2 s (after a partition no sealer may be allowed to seal: the heads still meet).
//  - the transactions of a block that does not stay on the chain go back into the pool: a block
//    this node sealed that did not become canonical (a lone sealer, right after sealing started,
//    sealed a sibling of it: the transaction was gone from the pool and never mined), and the
//    blocks a reorganisation drops (as geth re-injects them).
// BEAT_POA_DEBUG=1 logs the branches it puts and the stack of a failed fetch.
// Unchanged: Clique itself (in-turn/out-of-turn, the signer limit, the seal), the EVM, JSON-RPC.
import { bytesToHex, createAddressFromString, createZeroAddress, equalsBytes, hexToBytes } from '@ethereumjs/util'
import { BlockHeader, cliqueSigner, createBlockFromBytesArray } from '@ethereumjs/block'
import { RLPx } from '@ethereumjs/devp2p'
const base = new URL('./node_modules/@ethereumjs/client/dist/esm/', import.meta.url)
const { Config } = await import(new URL('src/config.js', base))
const { Miner } = await import(new URL('src/miner/miner.js', base))
const { FullSynchronizer } = await import(new URL('src/sync/fullsync.js', base))
const { RlpxServer } = await import(new URL('src/net/server/rlpxserver.js', base))
const { PeerPool } = await import(new URL('src/net/peerpool.js', base))
const { VMExecution } = await import(new URL('src/execution/vmexecution.js', base))
const { TxPool } = await import(new URL('src/service/txpool.js', base))
const { ReceiptsManager } = await import(new URL('src/execution/receipt.js', base))
const { BoundProtocol } = await import(new URL('src/net/protocol/boundprotocol.js', base))
const { Chain } = await import(new URL('src/blockchain/chain.js', base))
const SYNC_EXECUTION_VM_ERROR = (await import(new URL('src/types.js', base))).Event.SYNC_EXECUTION_VM_ERROR
const env = process.env
// eth_estimateGas runs the transaction in a scratch block whose header has no extraData, which a
// Clique chain's header check refuses ("extraData must be 97 bytes"): every estimate failed.
// Skip the format check for such a header only; a real block without a seal still fails Clique's
// signature check (the signer is recovered from extraData) when it is validated.
// The client makes its EVM without the Clique signer function the EVM requires on a PoA chain
// ("Must include cliqueSigner function"): no contract code could run, in blocks nor in eth_call.
const origSetup = VMExecution.prototype.setupMerkleVM
VMExecution.prototype.setupMerkleVM = async function () {
  const r = await origSetup.call(this)
  const opts = this.merkleVM?.evm?._optsCached
  if (opts !== undefined && opts.cliqueSigner === undefined) {
    opts.cliqueSigner = (header) => header.extraData.length >= 97 ? cliqueSigner(header) : createZeroAddress()
  }
  return r
}
// After a reorganisation a sealer could not execute the winning block: "the tx doesn't have the
// correct nonce. account has nonce of: 1 tx has nonce of: 0" -- the transaction was in the block
// it had sealed itself on the losing branch, the account state of that block was still in the
// execution's state cache (the miner's copy of the VM shares it), and the execution, finding
// the state root of the parent unchanged, did not clear it. The block was then held invalid and
// the node never executed another one (its JSON-RPC answered "State trie does not contain state
// root" for good). When an execution fails, the caches are cleared and the execution runs again
// (at most 5 times for one block: a block that fails on a clean state stays invalid).
const origRun = VMExecution.prototype.run
VMExecution.prototype.run = async function (...args) {
  if (this._beatRetry !== undefined) {
    this.vm?.stateManager?.clearCaches?.()
  }
  const r = await origRun.apply(this, args)
  const st = this.chainStatus
  if (st !== null && st !== undefined && st.status === 'INVALID') {
    const key = bytesToHex(st.hash)
    const n = this._beatRetry?.key === key ? this._beatRetry.n + 1 : 1
    if (n <= 5) {
      this._beatRetry = { key, n }
      this.chainStatus = null
      this.config.logger?.warn(`BEAT: execution of block ${st.height} failed: state caches cleared, executing it again (${n}/5)`)
      setTimeout(() => { void this.run(true).catch(() => {}) }, 200 * n)
    }
  } else if (this._beatRetry !== undefined && r !== 0) {
    this._beatRetry = undefined
  }
  return r
}
const origFormat = BlockHeader.prototype._consensusFormatValidation
BlockHeader.prototype._consensusFormatValidation = function () {
  if (this.extraData.length === 0 && this.common.consensusAlgorithm() === 'clique') return
  return origFormat.call(this)
}
// eth_getLogs checked only a filter's first topic (its loop returns after one): a filter on an
// indexed argument (Anchored's nodeId, batchSeq) returned every event of the kind, so a device's
// anchors came back with every other device's. Each given topic position is checked here; the
// rest of the method (canonical blocks by number, limits) is the client's.
ReceiptsManager.prototype.getLogs = async function (from, to, addresses, topics = []) {
  const matches = (logTopics) => topics.every((t, i) => {
    if (t === null || t === undefined) return true
    const got = logTopics[i]
    if (got === undefined) return false
    return Array.isArray(t) ? (t.length === 0 || t.some((x) => equalsBytes(x, got))) : equalsBytes(t, got)
  })
  const out = []
  let size = 0
  for (let i = from.header.number; i <= to.header.number; i++) {
    const block = await this.chain.getBlock(i)
    const receipts = await this.getReceipts(block.hash())
    if (receipts.length === 0) continue
    const logs = []
    let logIndex = 0
    for (const [receiptIndex, receipt] of receipts.entries()) {
      for (const log of receipt.logs) {
        const entry = { log, block, tx: block.transactions[receiptIndex], txIndex: receiptIndex, logIndex: logIndex++ }
        if (addresses && addresses.length > 0 && !addresses.some((a) => equalsBytes(a, log[0]))) continue
        if (!matches(log[1])) continue
        logs.push(entry)
      }
    }
    out.push(...logs)
    size += logs.reduce((n, l) => n + l.log[2].length + 32 * l.log[1].length + 200, 0)
    if (out.length >= this.GET_LOGS_LIMIT || size >= this.GET_LOGS_LIMIT_MEGABYTES * 1048576) break
  }
  return out
}
// The client listens for peers on every address (0.0.0.0): BEAT_POA_LISTEN binds it to one (in
// the lab, the router's management address: nothing on the tenant's links reaches the node).
if (env.BEAT_POA_LISTEN) {
  const origListen = RLPx.prototype.listen
  RLPx.prototype.listen = function (port, _host, ...rest) {
    return origListen.call(this, port, env.BEAT_POA_LISTEN, ...rest)
  }
}
if (env.BEAT_POA_NODEKEY) {
  const key = hexToBytes('0x' + env.BEAT_POA_NODEKEY.replace(/^0x/, ''))
  Config.getClientKey = async () => key
}
const sealPeers = Number(env.BEAT_POA_SEAL_PEERS ?? '0')
const settleMs = Number(env.BEAT_POA_SETTLE_MS ?? '3000')
const outOfTurnMinMs = Number(env.BEAT_POA_OUT_OF_TURN_MIN_MS ?? '0')
const origStart = Miner.prototype.start
Miner.prototype.start = function () {
  if (!this.config.mine || this.running || this._beatGate) return false
  this._beatGate = true
  const log = (m) => this.config.logger?.info(`BEAT: ${m}`)
  log(`sealing waits for ${sealPeers} peer(s), then ${settleMs} ms of sync`)
  const poll = () => {
    const peers = this.service.pool.peers.length
    if (peers < sealPeers) { setTimeout(poll, 250); return }
    setTimeout(() => {
      if (this.service.pool.peers.length < sealPeers) { setTimeout(poll, 250); return }
      // behind what the peers announced (a restarted sealer): catch up first
      const target = this.config.syncTargetHeight ?? 0n
      if (this.service.chain.headers.height < target) { setTimeout(poll, 250); return }
      log(`${this.service.pool.peers.length} peer(s), head ${this.service.chain.headers.height}: sealing starts`)
      origStart.call(this)
      void this.chainUpdated()   // the next block's time from the head's timestamp, as every sealer
    }, settleMs)
  }
  poll()
  return true
}
// The miner builds on the head as soon as it changes, but the head's state is made by the
// execution, which may not have run that block yet ("State trie does not contain state root",
// thrown from a timer: the process exits). Wait for the execution instead, and never let an
// assembly error end the node.
const origAssemble = Miner.prototype.assembleBlock
Miner.prototype.assembleBlock = async function () {
  if (!this.running || this.assembling) return
  try {
    const parent = this.service.chain.blocks.latest
    if (!(await this.execution.vm.stateManager.hasStateRoot(parent.header.stateRoot))) {
      this.config.logger?.debug(`BEAT: block ${parent.header.number} not executed yet: sealing waits`)
      setTimeout(() => void this.assembleBlock(), 100)
      return
    }
    return await origAssemble.call(this)
  } catch (err) {
    this.assembling = false
    this.config.logger?.warn(`BEAT: assembling a block failed (${err.message}); trying again`)
    if (this.running) setTimeout(() => void this.assembleBlock(), 250)
  }
}
const origQueue = Miner.prototype.queueNextAssembly
Miner.prototype.queueNextAssembly = async function (timeout) {
  if (outOfTurnMinMs > 0 && this.running) {
    try {
      const [signer] = this.config.accounts[0]
      const number = this.service.chain.blocks.latest.header.number + 1n
      const inTurn = await this.service.chain.blockchain.consensus.cliqueSignerInTurn(signer, number)
      if (inTurn === false) timeout = (timeout ?? this.period) + outOfTurnMinMs
    } catch (e) { /* let the client decide */ }
  }
  return origQueue.call(this, timeout)
}

// Block propagation for a small network of sealers: a new block goes whole to every peer (not to
// sqrt(peers) with hashes to the rest), and a block whose parent we hold is put into the
// blockchain even when its parent is not our head: the blockchain keeps the branch with the most
// difficulty (Clique: in-turn blocks weigh 2, out-of-turn 1), so two sealers' sibling blocks
// resolve the same way on every node instead of stalling each on its own branch.
async function handleNewBlock(block, peer) {
  if (peer) this.addToKnownByPeer(block.hash(), peer)
  const number = block.header.number
  let parentKnown = true
  try { await this.chain.blockchain.getBlock(block.header.parentHash) } catch { parentKnown = false }
  if (!parentKnown) {
    // a gap or a branch we do not hold: fetch its missing ancestors from the peer, by hash
    if (this.config.syncTargetHeight === undefined || number > this.config.syncTargetHeight) {
      this.config.syncTargetHeight = number
    }
    if (peer) void fetchBranch(this, block, peer)
    else this.handleNewBlockHashes([[block.hash(), number]])
    return
  }
  try {
    await this.chain.blockchain.validateHeader(block.header)
  } catch (err) {
    this.config.logger?.debug(`BEAT: new block ${number} refused: ${err}`)
    return
  }
  await this.sendNewBlock(block, this.pool.peers)
  const head = this.chain.blocks.latest?.hash()
  try {
    await this.chain.putBlocks([block])
  } catch (err) {
    this.config.logger?.warn(`BEAT: new block ${number} not stored: ${err}`)
    return
  }
  this.txPool.removeNewBlockTxs([block])
  this.txPool.checkRunState()      // a follower's pool starts once it is synchronised
  const now = this.chain.blocks.latest?.hash()
  if (head !== undefined && now !== undefined && !equalsBytes(head, block.header.parentHash) &&
      equalsBytes(now, block.hash())) {
    this.config.logger?.info(`BEAT: reorganised to block ${number} ${bytesToHex(block.hash()).slice(0, 10)} (a branch with more difficulty)`)
  }
  if (this.config.syncTargetHeight === undefined || number > this.config.syncTargetHeight) {
    this.config.syncTargetHeight = number
  }
}

// The miner removes a block's transactions from the pool once it has handed the block over
// (handleNewBlock), whether or not the block was put on the chain: a block sealed on a head that
// moved, or one whose put failed, took its transactions with it. A block of ours that is not
// canonical afterwards gives them back (after the miner's removal: the next turn of the loop).
FullSynchronizer.prototype.handleNewBlock = async function (block, peer) {
  beatSync = this
  const r = await handleNewBlock.call(this, block, peer)
  if (peer === undefined && block.transactions.length > 0 && !(await isCanonical(this.chain, block))) {
    setTimeout(() => void reinject(this, block.transactions, `our block ${block.header.number} ${bytesToHex(block.hash()).slice(0, 10)} is not on the chain`), 0)
  }
  return r
}

let beatSync     // the synchronizer (its transaction pool), for the chain's reorganisations
async function isCanonical(chain, block) {
  try {
    return equalsBytes((await chain.blockchain.getCanonicalHeader(block.header.number)).hash(), block.hash())
  } catch {
    return false
  }
}
// Transactions back into the pool (as sent to this node): those now on the chain are refused
// ("nonce too low"), as are those replaced meanwhile; a head whose state is not executed yet is
// waited for (at most ~5 s a transaction).
const FINAL_REFUSALS = /nonce too low|already in the TxPool|replacement|insufficient balance|exceeds block gas limit/
async function reinject(sync, txs, why) {
  let back = 0
  for (const tx of txs) {
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        await sync.txPool.add(tx, true)
        back++
        break
      } catch (err) {
        if (FINAL_REFUSALS.test(String(err?.message ?? err))) break
        await new Promise((r) => setTimeout(r, 250))
      }
    }
  }
  if (back > 0) sync.config.logger?.info(`BEAT: ${back} transaction(s) back into the pool: ${why}`)
}
// A reorganisation: the blocks of the old head's branch that are no longer canonical (up to 128
// back) give their transactions back, as geth re-injects them.
const origPutBlocks = Chain.prototype.putBlocks
Chain.prototype.putBlocks = async function (blocks, ...rest) {
  const old = this.blocks.latest
  const r = await origPutBlocks.call(this, blocks, ...rest)
  const sync = beatSync
  if (sync !== undefined && old !== null && old !== undefined && old.header.number > 0n &&
      !(await isCanonical(this, old))) {
    const dropped = []
    let b = old
    for (let i = 0; i < 128 && b !== undefined && b.header.number > 0n; i++) {
      if (await isCanonical(this, b)) break
      dropped.push(b)
      try { b = await this.blockchain.getBlock(b.header.parentHash) } catch { b = undefined }
    }
    // logged here too, not only where a new block arrives: a branch met through the
    // synchroniser (a node that was cut off catching up) moves this node as well
    sync.config.logger?.info(`BEAT: reorganised past ${dropped.length} block(s) up to ${old.header.number} ${bytesToHex(old.hash()).slice(0, 10)} (no longer on the chain)`)
    const txs = dropped.reverse().flatMap((x) => x.transactions)
    if (txs.length > 0) {
      setTimeout(() => void reinject(sync, txs, `${dropped.length} block(s) up to ${old.header.number} dropped by a reorganisation`), 0)
    }
  }
  return r
}

const known = async (sync, hash) => {
  try { await sync.chain.blockchain.getBlock(hash); return true } catch { return false }
}
// The ancestors of `block` that we lack, asked from `peer`, then the whole branch put into the
// blockchain (which keeps it if it carries more difficulty). A short gap (a sibling branch) is
// walked back one header at a time by hash (the client answers a reverse request by hash with
// the first header only), up to 128; a long one (a node far behind: restarted, or resynced from
// a fresh database) is asked by number, 128 headers a request, from a little below our head.
// The client matches an answer to the request of its kind that waits, whatever its request id:
// the late answer to a request that had timed out (a loaded machine) was taken as the answer to
// the next one (a request for header 31 got header 1), and from then on every answer was one
// behind. The branch fetch below asks with its own request ids and takes only the answer that
// carries its id (the client's own requests are left as they are); every answer is also checked
// against what was asked.
const BEAT_ANSWERS = new Set(['BlockHeaders', 'BlockBodies'])
const origHandle = BoundProtocol.prototype.handle
BoundProtocol.prototype.handle = function (incoming) {
  const mine = this._beatPending
  if (mine !== undefined && mine.size > 0) {
    const message = this.protocol.messages.find((m) => m.code === incoming.code)
    if (message !== undefined && BEAT_ANSWERS.has(message.name)) {
      let data
      try { data = this.protocol.decode(message, incoming.payload) } catch { data = undefined }
      const waiting = data !== undefined ? mine.get(`${message.name}:${data[0]}`) : undefined
      if (waiting !== undefined) {
        mine.delete(`${message.name}:${data[0]}`)
        clearTimeout(waiting.timer)
        waiting.resolve(data[1])
        return
      }
    }
  }
  return origHandle.call(this, incoming)
}
let beatReqId = BigInt(Date.now()) * 1000n
function ask(peer, name, args, answer, timeoutMs = 8000) {
  const eth = peer.eth
  if (eth === undefined) return Promise.resolve(undefined)
  if (eth._beatPending === undefined) eth._beatPending = new Map()
  const reqId = ++beatReqId
  const key = `${answer}:${reqId}`
  return new Promise((resolve) => {
    const timer = setTimeout(() => { eth._beatPending.delete(key); resolve(undefined) }, timeoutMs)
    eth._beatPending.set(key, { resolve, timer })
    try { eth.send(name, { ...args, reqId }) } catch (err) {
      clearTimeout(timer); eth._beatPending.delete(key); resolve(undefined)
    }
  })
}
async function headerByHash(peer, hash) {
  for (let i = 0; i < 3; i++) {
    const hs = await ask(peer, 'GetBlockHeaders', { block: hash, max: 1 }, 'BlockHeaders')
    const h = (hs ?? []).find((x) => equalsBytes(x.hash(), hash))
    if (h !== undefined) return h
  }
  return undefined
}
async function headersByNumber(peer, from, max) {
  for (let i = 0; i < 3; i++) {
    const hs = (await ask(peer, 'GetBlockHeaders', { block: from, max }, 'BlockHeaders')) ?? []
    if (hs.length > 0 && hs.every((h, j) => h.number === from + BigInt(j))) return hs
  }
  return []
}
async function headersBack(sync, block, peer) {
  const branch = []
  let hash = block.header.parentHash
  for (let i = 0; i < 128; i++) {
    const h = await headerByHash(peer, hash)
    if (h === undefined) return undefined
    branch.push(h)
    if (await known(sync, h.parentHash)) return branch.reverse()
    hash = h.parentHash
  }
  return undefined
}
async function headersForward(sync, block, peer) {
  const ours = sync.chain.headers.height
  let from = ours > 8n ? ours - 8n : 1n
  const all = []
  while (from < block.header.number) {
    const left = block.header.number - from
    const hs = await headersByNumber(peer, from, Number(left < 128n ? left : 128n))
    if (hs.length === 0) return undefined
    all.push(...hs)
    from += BigInt(hs.length)
  }
  // from the first header whose parent we hold, each the parent of the next, up to the block
  let start = -1
  for (let i = 0; i < all.length; i++) {
    if (await known(sync, all[i].parentHash)) { start = i; break }
  }
  if (start < 0) return undefined
  const branch = all.slice(start)
  for (let i = 1; i < branch.length; i++) {
    if (!equalsBytes(branch[i].parentHash, branch[i - 1].hash())) return undefined
  }
  if (branch.length === 0 || !equalsBytes(branch[branch.length - 1].hash(), block.header.parentHash)) return undefined
  return branch
}
async function fetchBranch(sync, block, peer) {
  if (sync._beatFetching === true || peer.eth === undefined) return
  sync._beatFetching = true
  try {
    let branch
    if (block.header.number - sync.chain.headers.height > 8n) branch = await headersForward(sync, block, peer)
    if (branch === undefined) branch = await headersBack(sync, block, peer)
    if (branch === undefined) {
      sync.config.logger?.warn(`BEAT: block ${block.header.number} from ${peer.id.slice(0, 8)}: no common ancestor found`)
      return
    }
    const blocks = []
    for (let i = 0; i < branch.length; i += 64) {
      const part = branch.slice(i, i + 64)
      let made
      for (let attempt = 0; attempt < 3 && made === undefined; attempt++) {
        const got = await ask(peer, 'GetBlockBodies', { hashes: part.map((h) => h.hash()) }, 'BlockBodies')
        const bodies = [undefined, got]
        if (!Array.isArray(got) || got.length !== part.length) continue
        try {
          made = []
          for (const [j, h] of part.entries()) {
            const [txs, uncles, withdrawals] = bodies[1][j]
            const values = [h.raw(), txs, uncles]
            if (withdrawals !== undefined) values.push(withdrawals)
            const b = createBlockFromBytesArray(values, { common: h.common })
            if (!(await b.transactionsTrieIsValid())) throw new Error('a body that is not this block\'s')
            made.push(b)
          }
        } catch (err) {
          made = undefined      // an answer to another request: ask again
        }
      }
      if (made === undefined) return
      blocks.push(...made)
    }
    blocks.push(block)
    if (process.env.BEAT_POA_DEBUG) sync.config.logger?.warn(`BEAT: putting ${blocks.map((b) => `${b.header.number}:${bytesToHex(b.hash()).slice(0, 8)}<${bytesToHex(b.header.parentHash).slice(0, 8)}`).join(' ')} finalized=${sync.chain.headers.finalized?.number} height=${sync.chain.headers.height}`)
    await sync.chain.putBlocks(blocks)
    sync.config.logger?.info(`BEAT: fetched a branch of ${blocks.length} block(s) up to ${block.header.number} from ${peer.id.slice(0, 8)}; head ${sync.chain.headers.height}`)
  } catch (err) {
    sync.config.logger?.warn(`BEAT: fetching the branch of block ${block.header.number}: ${err}`)
    if (process.env.BEAT_POA_DEBUG) sync.config.logger?.warn(`BEAT: ${err.stack}`)
  } finally {
    sync._beatFetching = false
  }
}
// Every 2 s each node offers its head to the peers that do not know it yet: after a partition,
// or a restart, the branches meet even when no sealer may seal (all "signed too recently").
const origSyncOpen = FullSynchronizer.prototype.open
FullSynchronizer.prototype.open = async function () {
  const r = await origSyncOpen.call(this)
  beatSync = this
  // the client stops synchronising for good at a block's failed execution (every node that
  // failed one stopped, and the chain with them); the execution is run again instead (above)
  this.config.events.removeListener(SYNC_EXECUTION_VM_ERROR, this.stop)
  if (this._beatGossip === undefined) {
    this._beatGossip = setInterval(() => {
      this.txPool.checkRunState()
      const head = this.chain.blocks.latest
      if (!head || head.header.number === 0n) return
      for (const peer of this.pool.peers) {
        if (!this.addToKnownByPeer(head.hash(), peer)) peer.eth?.send('NewBlock', [head, this.chain.blocks.td])
      }
    }, 2000)
    this._beatGossip.unref()
  }
  return r
}
// Transactions travel whole to every peer that does not know them yet. The client announces
// most of them by hash only, and its re-broadcast of received transactions sends them whole to
// a quarter of the peers (at least one: often the sender itself) and fails on the rest: a
// transaction sent to a follower never reached a sealer.
const txByHash = (pool, hashHex) => {
  const handled = pool.handled.get(hashHex)
  const list = handled !== undefined ? pool.pool.get(handled.address) : undefined
  return list?.find((o) => o.hash === hashHex)?.tx
}
// A transaction from a peer is judged as one sent to this node: the client refuses a peer's
// transaction whose tip is under 0.1 gwei, and the tip must be 0 here (ethereum.py's
// _fee_fields: with a tip the sealer and the others disagree on the block's state).
const origValidate = TxPool.prototype.validate
TxPool.prototype.validate = function (tx, _isLocal) {
  return origValidate.call(this, tx, true)
}
TxPool.prototype.sendNewTxHashes = function (txHashes, peers) {
  const txs = (txHashes?.[2] ?? []).map((h) => txByHash(this, bytesToHex(h).slice(2))).filter((tx) => tx !== undefined)
  this.sendTransactions(txs, peers)
}
// A pooled transaction whose nonce its sender's account has already used (the same nonce was
// sealed in another transaction: a replacement, a resend after a restart; or it came from a peer
// while this node was still behind) can never run, and the client keeps it for 20 minutes: the
// pool removes only the transactions of new blocks, by hash. The block builder takes an account's
// transactions only when the lowest pooled nonce is the account's nonce, so one such leftover held
// every later transaction of that account out of every block this node sealed (a restarted
// sealer, given its peers' stale pool, sealed none of its device's anchors: "skipped byNonce").
// They are dropped here, against the state the block is built on, as geth drops them at each head.
const origByPrice = TxPool.prototype.txsByPriceAndNonce
TxPool.prototype.txsByPriceAndNonce = async function (vm, opts) {
  let dropped = 0
  for (const [address, objects] of [...this.pool]) {
    const account = await vm.stateManager.getAccount(createAddressFromString(`0x${address}`))
    const nonce = account?.nonce ?? 0n
    for (const o of objects) {
      if (o.tx.nonce < nonce) { this.removeByHash(o.hash, o.tx); dropped++ }
    }
  }
  if (dropped > 0) this.config.logger?.info(`BEAT: dropped ${dropped} pooled transaction(s) whose nonce their sender already used`)
  return origByPrice.call(this, vm, opts)
}
TxPool.prototype.handleAnnouncedTxs = async function (txs, peer, peerPool) {
  if (!this.running || txs === undefined || txs.length === 0) return
  this.addToKnownByPeer(txs.map((tx) => tx.hash()), peer)
  const added = []
  for (const tx of txs) {
    try { await this.add(tx); added.push(tx) } catch (err) {
      this.config.logger?.debug(`BEAT: transaction ${bytesToHex(tx.hash())} not pooled: ${err.message}`)
    }
  }
  this.sendTransactions(added, peerPool.peers)
}
// Static peers (BEAT_POA_PEERS: enode URLs, comma-separated): dialled every second while not
// connected (also after they restart), never banned (a private network of known operators: a
// fetch that failed during a fork must not cut a sealer off the only peer it has).
const statics = (env.BEAT_POA_PEERS ?? '').split(',').filter((u) => u.startsWith('enode://')).map((u) => {
  const m = /^enode:\/\/([0-9a-fA-F]{128})@\[?([^\]]+?)\]?:(\d+)$/.exec(u.trim())
  if (!m) throw new Error(`BEAT_POA_PEERS: ${u} is not enode://<128 hex>@host:port`)
  return { idHex: m[1].toLowerCase(), id: hexToBytes('0x' + m[1]), address: m[2], tcpPort: Number(m[3]) }
})
const staticIds = new Set(statics.map((p) => p.idHex))
const ownId = (env.BEAT_POA_NODEID ?? '').replace(/^0x/, '').toLowerCase()
const origServerStart = RlpxServer.prototype.start
RlpxServer.prototype.start = async function () {
  const started = await origServerStart.call(this)
  const server = this
  if (statics.length > 0) {
    // Two nodes dialling each other at once both drop one connection as a duplicate, and the
    // drop removes the peer kept by the other (devp2p keys both by the node id): they churned for
    // half a minute before holding one. So the node with the higher id lets the lower one dial
    // first, and dials itself only when no connection came within 4 s.
    const since = new Map()
    const dial = () => {
      const rlpx = server.rlpx
      if (!rlpx || !server.started) return
      const now = Date.now()
      for (const p of statics) {
        if (rlpx._peers.has(p.idHex)) { since.delete(p.idHex); continue }
        if (!since.has(p.idHex)) since.set(p.idHex, now)
        if (ownId !== '' && ownId > p.idHex && now - since.get(p.idHex) < 4000) continue
        rlpx.connect({ id: p.id, address: p.address, tcpPort: p.tcpPort }).catch(() => {})
      }
    }
    setTimeout(dial, 200)
    setInterval(dial, 1000).unref()
  }
  return started
}
const origBan = PeerPool.prototype.ban
PeerPool.prototype.ban = function (peer, maxAge) {
  if (staticIds.has(String(peer.id).replace(/^0x/, '').toLowerCase())) {
    this.config.logger?.debug(`BEAT: not banning static peer ${String(peer.id).slice(0, 10)}`)
    return
  }
  return origBan.call(this, peer, maxAge)
}
await import(new URL('bin/cli.js', base))
