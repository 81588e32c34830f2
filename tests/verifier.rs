//! The verifier accepts every program of the real object on this kernel, and the object holds
//! every map `portmap-common` names.

use portmap_common::{names, programs};
use portmap_tests::process::require_root;
use portmap_user::dataplane::Dataplane;

// Loading runs the verifier over every program; each reports what it processed.
#[test]
fn every_program_loads_and_every_map_exists() {
    require_root();
    let mut dataplane = Dataplane::load().expect("the verifier accepts every program");
    let ebpf = dataplane.ebpf_mut();
    for name in programs::ALL {
        let program = ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name}"));
        let info = program
            .info()
            .unwrap_or_else(|e| panic!("info of {name}: {e}"));
        let processed = info.verified_instruction_count();
        eprintln!("{name}: loaded, {processed:?} instructions verified");
        assert!(
            processed.is_none_or(|n| n > 0),
            "{name} verified no instructions"
        );
    }
    for name in names::ALL {
        assert!(ebpf.map(name).is_some(), "the object has no map {name}");
    }
}
