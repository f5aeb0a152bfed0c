//! The one wasmtime [`Engine`] a process uses, and the epoch ticker that
//! drives deadlines.

use crate::error::RuntimeError;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Guests yield to the async executor at each
/// tick and deadlines are checked then, so this bounds both how long one
/// spinning guest can hold a thread and how precisely deadlines fire.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Ticks a guest runs between yields to the executor (and deadline
/// checks): 10 ms. Often enough that a spinning guest cannot starve the
/// requests sharing its thread; rare enough that a request needing a few
/// milliseconds of CPU (a language runtime) runs to the end in one go,
/// instead of interleaving with every other request in flight and losing
/// its caches each time.
pub const YIELD_EVERY_TICKS: u64 = 5;

/// Sizing of the engine's pooling allocator: how many wasm things may be live
/// at once in this process, and how much of a freed instance's memory stays
/// resident for the next instance of the same module.
///
/// What each knob costs (see the README's "Sizing the pooling allocator"):
/// virtual address space is reserved up front for every slot, about
/// `max_memory_size` plus a 32 MiB guard per linear memory slot (2 per
/// instance), `max_table_elements` x 8 bytes per table slot (4 per
/// instance) and 2 MiB per async stack (1 per instance); none of it is
/// resident until a guest touches it. Resident memory that outlives a
/// request is at most `warm_slots` x (`memory_keep_resident` +
/// `table_keep_resident`) per memory and table of those slots: the start of
/// the last guest's memory, reset in place instead of given back to the
/// kernel.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Component instances live at once (each request in flight holds one in
    /// per-request mode; each warm instance and each worker holds one).
    pub max_instances: u32,
    /// Largest linear memory any app may be granted.
    pub max_memory_size: usize,
    /// Largest table (in elements) a module may define; language runtimes
    /// need tens of thousands.
    pub max_table_elements: usize,
    /// Freed instance slots kept warm: a slot keeps its memory image mapped
    /// and up to `memory_keep_resident` of dirty pages resident, so the next
    /// instance of the same module in it starts without page faults.
    pub warm_slots: u32,
    /// Bytes at the start of each linear memory that a freed slot keeps
    /// resident: reset by copying the module's initial image back over
    /// them (and zeroes past it) rather than given back with `madvise`, so
    /// the next instance in the slot finds them mapped and takes no page
    /// faults there. The copy is of the memory's size or this, whichever
    /// is smaller, at every instance's end.
    pub memory_keep_resident: usize,
    /// The same for each table.
    pub table_keep_resident: usize,
}

/// Bytes of each linear memory kept resident in a warm slot by default:
/// the whole memory of the examples' JS and Python components (between 8
/// and 16 MiB each after a request), so that a fresh instance of either
/// takes no page faults.
pub const DEFAULT_MEMORY_KEEP_RESIDENT: usize = 16 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_size: 4 << 30,
            max_table_elements: 100_000,
            warm_slots: 100,
            memory_keep_resident: DEFAULT_MEMORY_KEEP_RESIDENT,
            table_keep_resident: 1 << 20,
        }
    }
}

/// The most live instances a pool is sized for, whatever the capacity:
/// each reserves about 8 GiB of address space up front (two 4 GiB memory
/// slots with guards), and a process has 128 TiB of it on x86-64; 5,000
/// take 40 TiB.
pub const MAX_POOLED_INSTANCES: u32 = 5_000;

impl EngineConfig {
    /// The pool for a node that offers `memory` bytes and `instances` app
    /// instances (its `--capacity`).
    ///
    /// - Live wasm instances: 10 per app instance the node offers (a
    ///   per-request app holds one per request in flight), at least 100 and
    ///   at most [`MAX_POOLED_INSTANCES`].
    /// - Warm slots: as many as an eighth of the node's memory can keep
    ///   resident at `memory_keep_resident` (plus the table's) per slot, at
    ///   most one per live instance and at least 8.
    pub fn for_capacity(memory: u64, instances: u32) -> Self {
        let base = Self::default();
        let max_instances = instances
            .saturating_mul(10)
            .clamp(100, MAX_POOLED_INSTANCES);
        let per_slot = (base.memory_keep_resident + base.table_keep_resident) as u64;
        let warm = (memory / 8 / per_slot).clamp(8, u64::from(max_instances)) as u32;
        Self {
            max_instances,
            warm_slots: warm,
            ..base
        }
    }
}

/// Builds the process's engine: pooling allocator, epoch interruption, async.
pub fn build_engine(cfg: &EngineConfig) -> Result<Engine, RuntimeError> {
    let instances = cfg.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // A component built with the preview 1 adapter has a few core
        // instances (its code, the adapter, shims).
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(cfg.max_memory_size)
        .table_elements(cfg.max_table_elements)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .max_memories_per_module(4)
        .max_tables_per_module(8)
        // Freed slots stay warm: the next instance of the same module gets
        // a slot its module last used (slot affinity), with the memory
        // image still mapped and the first `memory_keep_resident` bytes
        // reset in place (a copy of the image) and kept resident.
        .max_unused_warm_slots(cfg.warm_slots.min(instances))
        .linear_memory_keep_resident(cfg.memory_keep_resident)
        .table_keep_resident(cfg.table_keep_resident)
        // Not PAGEMAP_SCAN (Linux 6.7+), which would copy back only the
        // pages the guest wrote: it reports at most 32 runs of such pages
        // and decommits the rest, and a language runtime writes all over
        // its heap (CPython's reference counts), so most pages were still
        // faulted in again by the next instance. Copying the whole
        // resident part back from the image costs less than those faults
        // (see the README, "Per-request isolation: where the time goes").
        .pagemap_scan(Enabled::No);

    let mut config = Config::new();
    // Exactly the features the control plane validates with, so a module
    // it accepts is one every node can compile.
    config
        .wasm_features(shoal_api::wasm::ENGINE_FEATURES, true)
        .wasm_features(!shoal_api::wasm::ENGINE_FEATURES, false)
        .epoch_interruption(true)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        .parallel_compilation(true);
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the
/// engine exists.
///
/// Not until the ticker is dropped: deadlines and [`StopGuests`] reach a
/// guest only through the epoch, and a guest can outlive the runtime that
/// started it (its task holds the engine). A ticker that stopped with the
/// runtime would leave such a guest spinning forever, and with it the
/// process, whose executor waits for every task to yield at exit.
///
/// Tests that want to control time do not start one and call
/// [`Engine::increment_epoch`] themselves.
///
/// [`StopGuests`]: crate::host::StopGuests
pub struct EpochTicker {
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts a ticker on its own thread, so that a busy async executor
    /// cannot delay deadlines.
    pub fn start(engine: &Engine) -> Self {
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .ok();
        Self { _thread: thread }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One module per WebAssembly proposal, as text.
    const SAMPLES: &[(&str, &str)] = &[
        ("mvp", "(module (func (result i32) i32.const 1))"),
        ("threads", "(module (memory 1 1 shared))"),
        (
            "exceptions",
            "(module (tag $e) (func (block $b (try_table (catch_all $b) (throw $e)))))",
        ),
        ("gc", "(module (type (struct (field i32))))"),
        (
            "simd",
            "(module (func (result v128) v128.const i32x4 0 0 0 0))",
        ),
        (
            "relaxed-simd",
            "(module (func (param v128 v128 v128) (result v128) \
             local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd))",
        ),
        ("tail-call", "(module (func $f (return_call $f)))"),
        ("multi-memory", "(module (memory 1) (memory 1))"),
        ("memory64", "(module (memory i64 1))"),
        (
            "extended-const",
            "(module (global i32 (i32.add (i32.const 1) (i32.const 2))))",
        ),
        (
            "function-references",
            "(module (type $t (func)) (func (param (ref $t))))",
        ),
        ("reference-types", "(module (table 1 externref))"),
        (
            "wide-arithmetic",
            "(module (func (param i64 i64 i64 i64) (result i64 i64) \
             local.get 0 local.get 1 local.get 2 local.get 3 i64.add128))",
        ),
        ("custom-page-sizes", "(module (memory 1 (pagesize 1)))"),
        ("component", "(component)"),
    ];

    fn compiles(engine: &Engine, wasm: &[u8]) -> bool {
        if wasmparser::Parser::is_component(wasm) {
            wasmtime::component::Component::new(engine, wasm).is_ok()
        } else {
            wasmtime::Module::new(engine, wasm).is_ok()
        }
    }

    /// A node's pool follows its `--capacity`: 10 live instances per app
    /// instance, and as many warm slots as an eighth of its memory keeps
    /// resident.
    #[test]
    fn the_pool_is_sized_from_the_node_capacity() {
        let default = EngineConfig::for_capacity(4 << 30, 100);
        assert_eq!(default.max_instances, 1000);
        assert_eq!(default.warm_slots, 30);
        let small = EngineConfig::for_capacity(1 << 30, 3);
        assert_eq!((small.max_instances, small.warm_slots), (100, 8));
        // 10,000 apps: the pool stops at what the address space holds.
        let big = EngineConfig::for_capacity(64 << 30, 10_000);
        assert_eq!((big.max_instances, big.warm_slots), (5_000, 481));
        build_engine(&EngineConfig::for_capacity(1 << 30, 3)).unwrap();
        build_engine(&big).unwrap();
    }

    /// The control plane accepts exactly what the engine compiles, and the
    /// engine compiles exactly what wasmtime's defaults would: setting the
    /// features explicitly changed nothing.
    #[test]
    fn the_engine_compiles_what_the_control_plane_accepts() {
        let ours = build_engine(&EngineConfig {
            max_instances: 2,
            max_memory_size: 1 << 20,
            max_table_elements: 100,
            ..EngineConfig::default()
        })
        .unwrap();
        let defaults = Engine::new(&Config::new()).unwrap();
        let mut accepted = Vec::new();
        for (name, text) in SAMPLES {
            let wasm = wat::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let validated = shoal_api::wasm::validate(&wasm).is_ok();
            assert_eq!(compiles(&ours, &wasm), validated, "{name}");
            assert_eq!(compiles(&defaults, &wasm), validated, "{name}");
            if validated {
                accepted.push(*name);
            }
        }
        // Both answers occur, so the comparison means something.
        assert!(accepted.contains(&"simd") && accepted.contains(&"component"));
        assert!(!accepted.contains(&"threads"), "{accepted:?}");
    }
}
