//! Checks every struct layout and constant in this crate against Xen's public
//! headers (Debian `libxen-dev`): a generated C file of `_Static_assert`s is
//! compiled for x86_64 (`-m64`) and for i386 (`-m32`).

use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use xen_abi::errno::ALL as ALL_ERRNOS;
use xen_abi::{event_channel as ev, grant_table as gt, hvm, hypercall, memory, sched, shared_info as si, vcpu, version, xs_wire};

struct Checks(String);

impl Checks {
    fn new() -> Self {
        Checks(String::new())
    }
    fn eq(&mut self, c_expr: &str, value: usize) {
        writeln!(self.0, "_Static_assert(({c_expr}) == {value}u, \"{} is not {value}\");", c_expr.replace('"', "'")).unwrap();
    }
    fn size(&mut self, c_type: &str, value: usize) {
        self.eq(&format!("sizeof({c_type})"), value);
    }
    fn off(&mut self, c_type: &str, field: &str, value: usize) {
        self.eq(&format!("offsetof({c_type}, {field})"), value);
    }
}

macro_rules! fields {
    ($c:expr, $cty:literal, $rty:ty, [$($f:ident),* $(,)?]) => {{
        $c.size($cty, size_of::<$rty>());
        $( $c.off($cty, stringify!($f), offset_of!($rty, $f)); )*
    }};
}

/// The blkif structs of one ABI against the header compiled for it.
macro_rules! blkif_checks {
    ($c:ident, $abi:ident) => {{
        use xen_abi::blkif::$abi as b;
        fields!($c, "struct blkif_request", b::Request, [operation, nr_segments, handle, id, sector_number, seg]);
        $c.size("struct blkif_request", size_of::<b::Request>());
        fields!($c, "struct blkif_request_discard", b::RequestDiscard, [operation, flag, handle, id, sector_number, nr_sectors]);
        $c.size("struct blkif_request_discard", size_of::<b::RequestDiscard>());
        fields!(
            $c,
            "struct blkif_request_indirect",
            b::RequestIndirect,
            [operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs]
        );
        $c.size("struct blkif_request_indirect", size_of::<b::RequestIndirect>());
        fields!($c, "struct blkif_response", b::Response, [id, operation, status]);
        $c.size("struct blkif_response", size_of::<b::Response>());
        $c.eq("sizeof(union blkif_sring_entry)", size_of::<b::Request>().max(size_of::<b::Response>()));
    }};
}

fn common_checks(c: &mut Checks) {
    c.size("struct vcpu_time_info", size_of::<si::VcpuTimeInfo>());
    for (f, o) in [
        ("version", offset_of!(si::VcpuTimeInfo, version)),
        ("tsc_timestamp", offset_of!(si::VcpuTimeInfo, tsc_timestamp)),
        ("system_time", offset_of!(si::VcpuTimeInfo, system_time)),
        ("tsc_to_system_mul", offset_of!(si::VcpuTimeInfo, tsc_to_system_mul)),
        ("tsc_shift", offset_of!(si::VcpuTimeInfo, tsc_shift)),
        ("flags", offset_of!(si::VcpuTimeInfo, flags)),
    ] {
        c.off("struct vcpu_time_info", f, o);
    }
    fields!(c, "struct xen_feature_info", version::XenFeatureInfo, [submap_idx, submap]);
    fields!(c, "struct xen_compile_info", version::XenCompileInfo, [compiler, compile_by, compile_domain, compile_date]);
    fields!(c, "struct xen_hvm_param", hvm::XenHvmParam, [domid, index, value]);
    fields!(c, "struct sched_shutdown", sched::SchedShutdown, [reason]);
    fields!(c, "struct vcpu_register_vcpu_info", vcpu::VcpuRegisterVcpuInfo, [mfn, offset, rsvd]);
    fields!(c, "struct evtchn_alloc_unbound", ev::EvtchnAllocUnbound, [dom, remote_dom, port]);
    fields!(c, "struct evtchn_bind_interdomain", ev::EvtchnBindInterdomain, [remote_dom, remote_port, local_port]);
    fields!(c, "struct evtchn_bind_virq", ev::EvtchnBindVirq, [virq, vcpu, port]);
    fields!(c, "struct evtchn_bind_ipi", ev::EvtchnBindIpi, [vcpu, port]);
    fields!(c, "struct evtchn_close", ev::EvtchnPortArg, [port]);
    fields!(c, "struct evtchn_send", ev::EvtchnPortArg, [port]);
    fields!(c, "struct evtchn_unmask", ev::EvtchnPortArg, [port]);
    fields!(c, "struct evtchn_bind_vcpu", ev::EvtchnBindVcpu, [port, vcpu]);
    c.size("struct evtchn_reset", 2);
    fields!(c, "struct evtchn_status", ev::EvtchnStatus, [dom, port, status, vcpu]);
    c.off("struct evtchn_status", "u.unbound.dom", std::mem::offset_of!(ev::EvtchnStatus, u0));
    c.off("struct evtchn_status", "u.interdomain.dom", std::mem::offset_of!(ev::EvtchnStatus, u0));
    c.off("struct evtchn_status", "u.interdomain.port", std::mem::offset_of!(ev::EvtchnStatus, u1));
    c.off("struct evtchn_status", "u.virq", std::mem::offset_of!(ev::EvtchnStatus, u0));
    fields!(c, "struct grant_entry_v1", gt::GrantEntryV1, [flags, domid, frame]);
    fields!(c, "struct gnttab_query_size", gt::GnttabQuerySize, [dom, nr_frames, max_nr_frames, status]);
    fields!(c, "struct gnttab_set_version", gt::GnttabSetVersion, [version]);
    fields!(c, "struct gnttab_get_version", gt::GnttabGetVersion, [dom, pad, version]);
    fields!(c, "struct xen_hvm_evtchn_upcall_vector", hvm::XenHvmEvtchnUpcallVector, [vcpu, vector]);
    fields!(c, "struct vcpu_set_periodic_timer", vcpu::VcpuSetPeriodicTimer, [period_ns]);
    c.off("struct vcpu_set_singleshot_timer", "timeout_abs_ns", std::mem::offset_of!(vcpu::VcpuSetSingleshotTimer, timeout_abs_ns));
    c.off("struct vcpu_set_singleshot_timer", "flags", std::mem::offset_of!(vcpu::VcpuSetSingleshotTimer, flags));
    fields!(c, "struct vcpu_register_runstate_memory_area", vcpu::VcpuRegisterMemoryArea, [addr]);
    fields!(c, "struct vcpu_register_time_memory_area", vcpu::VcpuRegisterMemoryArea, [addr]);
    fields!(
        c,
        "struct vcpu_hvm_x86_32",
        vcpu::VcpuHvmX86_32,
        [
            eax, ecx, edx, ebx, esp, ebp, esi, edi, eip, eflags, cr0, cr3, cr4, efer, cs_base, ds_base, ss_base, es_base, tr_base,
            cs_limit, ds_limit, ss_limit, es_limit, tr_limit, cs_ar, ds_ar, ss_ar, es_ar, tr_ar
        ]
    );
    fields!(c, "struct vcpu_hvm_x86_64", vcpu::VcpuHvmX86_64, [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, rip, rflags, cr0, cr3, cr4, efer]);
    fields!(c, "struct vcpu_hvm_context", vcpu::VcpuHvmContext, [mode]);
    c.off("struct vcpu_hvm_context", "cpu_regs", std::mem::offset_of!(vcpu::VcpuHvmContext, regs));
    c.eq("NR_VIRQS", ev::NR_VIRQS as usize);
    c.eq("GNTTAB_NR_RESERVED_ENTRIES", gt::GNTTAB_NR_RESERVED_ENTRIES as usize);
    c.eq("XEN_LEGACY_MAX_VCPUS", si::XEN_LEGACY_MAX_VCPUS);
    c.eq("sizeof(xen_extraversion_t)", version::XEN_EXTRAVERSION_LEN);
    c.eq("sizeof(xen_capabilities_info_t)", version::XEN_CAPABILITIES_INFO_LEN);
    c.eq("sizeof(xen_changeset_info_t)", version::XEN_CHANGESET_INFO_LEN);
    c.eq("sizeof(xen_commandline_t)", version::XEN_COMMANDLINE_LEN);
    c.eq("sizeof(xen_domain_handle_t)", version::XEN_DOMAIN_HANDLE_LEN);

    // netif.h (one layout for every ABI)
    {
        use xen_abi::netif as n;
        fields!(c, "struct netif_tx_request", n::TxRequest, [gref, offset, flags, id, size]);
        fields!(c, "struct netif_tx_response", n::TxResponse, [id, status]);
        fields!(c, "struct netif_rx_request", n::RxRequest, [id, gref]);
        fields!(c, "struct netif_rx_response", n::RxResponse, [id, offset, flags, status]);
        c.size("struct netif_extra_info", size_of::<n::ExtraInfo>());
        c.off("struct netif_extra_info", "u", offset_of!(n::ExtraInfo, u));
        c.off("struct netif_extra_info", "u.gso.type", offset_of!(n::ExtraInfo, u) + 2);
        c.off("struct netif_extra_info", "u.gso.features", offset_of!(n::ExtraInfo, u) + 4);
        c.eq("sizeof(union netif_tx_sring_entry)", n::TX_SLOT);
        c.eq("sizeof(union netif_rx_sring_entry)", n::RX_SLOT);
        for (name, v) in [
            ("NETTXF_csum_blank", n::NETTXF_CSUM_BLANK),
            ("NETTXF_data_validated", n::NETTXF_DATA_VALIDATED),
            ("NETTXF_more_data", n::NETTXF_MORE_DATA),
            ("NETTXF_extra_info", n::NETTXF_EXTRA_INFO),
            ("NETRXF_data_validated", n::NETRXF_DATA_VALIDATED),
            ("NETRXF_csum_blank", n::NETRXF_CSUM_BLANK),
            ("NETRXF_more_data", n::NETRXF_MORE_DATA),
            ("NETRXF_extra_info", n::NETRXF_EXTRA_INFO),
        ] {
            c.eq(name, v as usize);
        }
        for (name, v) in [
            ("XEN_NETIF_EXTRA_TYPE_NONE", n::EXTRA_TYPE_NONE),
            ("XEN_NETIF_EXTRA_TYPE_GSO", n::EXTRA_TYPE_GSO),
            ("XEN_NETIF_EXTRA_TYPE_MCAST_ADD", n::EXTRA_TYPE_MCAST_ADD),
            ("XEN_NETIF_EXTRA_TYPE_MCAST_DEL", n::EXTRA_TYPE_MCAST_DEL),
            ("XEN_NETIF_EXTRA_TYPE_HASH", n::EXTRA_TYPE_HASH),
            ("XEN_NETIF_EXTRA_TYPE_MAX", n::EXTRA_TYPE_MAX),
            ("XEN_NETIF_EXTRA_FLAG_MORE", n::EXTRA_FLAG_MORE),
            ("XEN_NETIF_GSO_TYPE_NONE", n::GSO_TYPE_NONE),
            ("XEN_NETIF_GSO_TYPE_TCPV4", n::GSO_TYPE_TCPV4),
            ("XEN_NETIF_GSO_TYPE_TCPV6", n::GSO_TYPE_TCPV6),
        ] {
            c.eq(name, v as usize);
        }
        for (name, v) in [
            ("NETIF_RSP_DROPPED", n::RSP_DROPPED),
            ("NETIF_RSP_ERROR", n::RSP_ERROR),
            ("NETIF_RSP_OKAY", n::RSP_OKAY),
            ("NETIF_RSP_NULL", n::RSP_NULL),
        ] {
            c.eq(&format!("{name} + 10"), (v + 10) as usize);
        }
        c.eq("XEN_NETIF_NR_SLOTS_MIN", n::NR_SLOTS_MIN);
        c.eq("XEN_NETIF_MAX_TX_SIZE", n::MAX_TX_SIZE);
    }
    // blkif.h (the ABI-independent parts; the structs per ABI below)
    fields!(c, "struct blkif_request_segment", xen_abi::blkif::Segment, [gref, first_sect, last_sect]);
    c.size("struct blkif_request_segment", size_of::<xen_abi::blkif::Segment>());
    c.eq("offsetof(struct blkif_sring, ring)", xen_abi::blkif::SRING_HEADER);
    for (name, v) in [
        ("BLKIF_OP_READ", xen_abi::blkif::OP_READ),
        ("BLKIF_OP_WRITE", xen_abi::blkif::OP_WRITE),
        ("BLKIF_OP_WRITE_BARRIER", xen_abi::blkif::OP_WRITE_BARRIER),
        ("BLKIF_OP_FLUSH_DISKCACHE", xen_abi::blkif::OP_FLUSH_DISKCACHE),
        ("BLKIF_OP_DISCARD", xen_abi::blkif::OP_DISCARD),
        ("BLKIF_OP_INDIRECT", xen_abi::blkif::OP_INDIRECT),
        ("BLKIF_DISCARD_SECURE", xen_abi::blkif::DISCARD_SECURE),
    ] {
        c.eq(name, v as usize);
    }
    c.eq("BLKIF_MAX_SEGMENTS_PER_REQUEST", xen_abi::blkif::MAX_SEGMENTS_PER_REQUEST);
    c.eq("BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", xen_abi::blkif::MAX_INDIRECT_PAGES_PER_REQUEST);
    c.eq(
        "VDISK_CDROM | VDISK_REMOVABLE << 4 | VDISK_READONLY << 8",
        (xen_abi::blkif::VDISK_CDROM | xen_abi::blkif::VDISK_REMOVABLE << 4 | xen_abi::blkif::VDISK_READONLY << 8) as usize,
    );
    c.eq("BLKIF_RSP_OKAY + 10", (xen_abi::blkif::RSP_OKAY + 10) as usize);
    c.eq("BLKIF_RSP_ERROR + 10", (xen_abi::blkif::RSP_ERROR + 10) as usize);
    c.eq("BLKIF_RSP_EOPNOTSUPP + 10", (xen_abi::blkif::RSP_EOPNOTSUPP + 10) as usize);

    // xenbus.h
    use xen_abi::xenbus::state as xb;
    for (name, v) in [
        ("XenbusStateUnknown", xb::UNKNOWN),
        ("XenbusStateInitialising", xb::INITIALISING),
        ("XenbusStateInitWait", xb::INIT_WAIT),
        ("XenbusStateInitialised", xb::INITIALISED),
        ("XenbusStateConnected", xb::CONNECTED),
        ("XenbusStateClosing", xb::CLOSING),
        ("XenbusStateClosed", xb::CLOSED),
        ("XenbusStateReconfiguring", xb::RECONFIGURING),
        ("XenbusStateReconfigured", xb::RECONFIGURED),
    ] {
        c.eq(name, v as usize);
    }

    // console.h
    c.off("struct xencons_interface", "in", std::mem::offset_of!(xen_abi::console::XenconsInterface, input));
    fields!(c, "struct xencons_interface", xen_abi::console::XenconsInterface, [out, in_cons, in_prod, out_cons, out_prod]);
    c.size("struct xencons_interface", size_of::<xen_abi::console::XenconsInterface>());

    // xs_wire.h
    fields!(
        c,
        "struct xenstore_domain_interface",
        xs_wire::XenstoreDomainInterface,
        [req, rsp, req_cons, req_prod, rsp_cons, rsp_prod, server_features, connection, error]
    );
    c.size("struct xenstore_domain_interface", size_of::<xs_wire::XenstoreDomainInterface>());
    c.size("struct xsd_sockmsg", xs_wire::HEADER_LEN);
    for (name, v) in [
        ("XS_CONTROL", xs_wire::ty::CONTROL),
        ("XS_DIRECTORY", xs_wire::ty::DIRECTORY),
        ("XS_READ", xs_wire::ty::READ),
        ("XS_GET_PERMS", xs_wire::ty::GET_PERMS),
        ("XS_WATCH", xs_wire::ty::WATCH),
        ("XS_UNWATCH", xs_wire::ty::UNWATCH),
        ("XS_TRANSACTION_START", xs_wire::ty::TRANSACTION_START),
        ("XS_TRANSACTION_END", xs_wire::ty::TRANSACTION_END),
        ("XS_INTRODUCE", xs_wire::ty::INTRODUCE),
        ("XS_RELEASE", xs_wire::ty::RELEASE),
        ("XS_GET_DOMAIN_PATH", xs_wire::ty::GET_DOMAIN_PATH),
        ("XS_WRITE", xs_wire::ty::WRITE),
        ("XS_MKDIR", xs_wire::ty::MKDIR),
        ("XS_RM", xs_wire::ty::RM),
        ("XS_SET_PERMS", xs_wire::ty::SET_PERMS),
        ("XS_WATCH_EVENT", xs_wire::ty::WATCH_EVENT),
        ("XS_ERROR", xs_wire::ty::ERROR),
        ("XS_IS_DOMAIN_INTRODUCED", xs_wire::ty::IS_DOMAIN_INTRODUCED),
        ("XS_RESUME", xs_wire::ty::RESUME),
        ("XS_SET_TARGET", xs_wire::ty::SET_TARGET),
        ("XS_RESET_WATCHES", xs_wire::ty::RESET_WATCHES),
        ("XS_DIRECTORY_PART", xs_wire::ty::DIRECTORY_PART),
        ("XENSTORE_RING_SIZE", xs_wire::RING_SIZE),
        ("XENSTORE_SERVER_FEATURE_RECONNECTION", xs_wire::SERVER_FEATURE_RECONNECTION),
        ("XENSTORE_SERVER_FEATURE_ERROR", xs_wire::SERVER_FEATURE_ERROR),
        ("XENSTORE_CONNECTED", xs_wire::CONNECTED),
        ("XENSTORE_RECONNECT", xs_wire::RECONNECT),
        ("XENSTORE_ERROR_NONE", xs_wire::ERROR_NONE),
        ("XENSTORE_ERROR_COMM", xs_wire::ERROR_COMM),
        ("XENSTORE_ERROR_RINGIDX", xs_wire::ERROR_RINGIDX),
        ("XENSTORE_ERROR_PROTO", xs_wire::ERROR_PROTO),
    ] {
        c.eq(name, v as usize);
    }
    for (name, v) in [
        ("XENSTORE_PAYLOAD_MAX", xs_wire::PAYLOAD_MAX),
        ("XENSTORE_ABS_PATH_MAX", xs_wire::ABS_PATH_MAX),
        ("XENSTORE_REL_PATH_MAX", xs_wire::REL_PATH_MAX),
    ] {
        c.eq(name, v);
    }

    // Constants.
    for (name, v) in [
        ("__HYPERVISOR_set_timer_op", hypercall::SET_TIMER_OP),
        ("__HYPERVISOR_xen_version", hypercall::XEN_VERSION),
        ("__HYPERVISOR_console_io", hypercall::CONSOLE_IO),
        ("__HYPERVISOR_grant_table_op", hypercall::GRANT_TABLE_OP),
        ("__HYPERVISOR_vcpu_op", hypercall::VCPU_OP),
        ("__HYPERVISOR_memory_op", hypercall::MEMORY_OP),
        ("__HYPERVISOR_sched_op", hypercall::SCHED_OP),
        ("__HYPERVISOR_event_channel_op", hypercall::EVENT_CHANNEL_OP),
        ("__HYPERVISOR_physdev_op", hypercall::PHYSDEV_OP),
        ("__HYPERVISOR_hvm_op", hypercall::HVM_OP),
        ("__HYPERVISOR_dm_op", hypercall::DM_OP),
        ("CONSOLEIO_write", hypercall::CONSOLEIO_WRITE),
        ("EVTCHNOP_bind_interdomain", ev::EVTCHNOP_BIND_INTERDOMAIN),
        ("EVTCHNOP_bind_virq", ev::EVTCHNOP_BIND_VIRQ),
        ("EVTCHNOP_bind_pirq", ev::EVTCHNOP_BIND_PIRQ),
        ("EVTCHNOP_close", ev::EVTCHNOP_CLOSE),
        ("EVTCHNOP_send", ev::EVTCHNOP_SEND),
        ("EVTCHNOP_status", ev::EVTCHNOP_STATUS),
        ("EVTCHNOP_alloc_unbound", ev::EVTCHNOP_ALLOC_UNBOUND),
        ("EVTCHNOP_bind_ipi", ev::EVTCHNOP_BIND_IPI),
        ("EVTCHNOP_bind_vcpu", ev::EVTCHNOP_BIND_VCPU),
        ("EVTCHNOP_unmask", ev::EVTCHNOP_UNMASK),
        ("EVTCHNOP_reset", ev::EVTCHNOP_RESET),
        ("EVTCHNOP_init_control", ev::EVTCHNOP_INIT_CONTROL),
        ("EVTCHNOP_expand_array", ev::EVTCHNOP_EXPAND_ARRAY),
        ("EVTCHNOP_set_priority", ev::EVTCHNOP_SET_PRIORITY),
        ("EVTCHNSTAT_closed", ev::EVTCHNSTAT_CLOSED),
        ("EVTCHNSTAT_unbound", ev::EVTCHNSTAT_UNBOUND),
        ("EVTCHNSTAT_interdomain", ev::EVTCHNSTAT_INTERDOMAIN),
        ("EVTCHNSTAT_pirq", ev::EVTCHNSTAT_PIRQ),
        ("EVTCHNSTAT_virq", ev::EVTCHNSTAT_VIRQ),
        ("EVTCHNSTAT_ipi", ev::EVTCHNSTAT_IPI),
        ("VIRQ_TIMER", ev::VIRQ_TIMER),
        ("VIRQ_DEBUG", ev::VIRQ_DEBUG),
        ("VIRQ_CONSOLE", ev::VIRQ_CONSOLE),
        ("VIRQ_DOM_EXC", ev::VIRQ_DOM_EXC),
        ("VIRQ_XENOPROF", ev::VIRQ_XENOPROF),
        ("VIRQ_XENPMU", ev::VIRQ_XENPMU),
        ("VIRQ_ARCH_0", ev::VIRQ_ARCH_0),
        ("GNTTABOP_map_grant_ref", gt::GNTTABOP_MAP_GRANT_REF),
        ("GNTTABOP_setup_table", gt::GNTTABOP_SETUP_TABLE),
        ("GNTTABOP_query_size", gt::GNTTABOP_QUERY_SIZE),
        ("GNTTABOP_set_version", gt::GNTTABOP_SET_VERSION),
        ("GNTTABOP_get_version", gt::GNTTABOP_GET_VERSION),
        ("GTF_permit_access", u32::from(gt::GTF_PERMIT_ACCESS)),
        ("GTF_accept_transfer", u32::from(gt::GTF_ACCEPT_TRANSFER)),
        ("GTF_transitive", u32::from(gt::GTF_TRANSITIVE)),
        ("GTF_type_mask", u32::from(gt::GTF_TYPE_MASK)),
        ("GTF_readonly", u32::from(gt::GTF_READONLY)),
        ("GTF_reading", u32::from(gt::GTF_READING)),
        ("GTF_writing", u32::from(gt::GTF_WRITING)),
        ("GTF_sub_page", u32::from(gt::GTF_SUB_PAGE)),
        ("(GNTST_general_error + 100)", (gt::GNTST_GENERAL_ERROR + 100) as u32),
        ("(GNTST_bad_domain + 100)", (gt::GNTST_BAD_DOMAIN + 100) as u32),
        ("(GNTST_bad_gntref + 100)", (gt::GNTST_BAD_GNTREF + 100) as u32),
        ("(GNTST_permission_denied + 100)", (gt::GNTST_PERMISSION_DENIED + 100) as u32),
        ("(GNTST_bad_page + 100)", (gt::GNTST_BAD_PAGE + 100) as u32),
        ("RUNSTATE_running", vcpu::RUNSTATE_RUNNING),
        ("RUNSTATE_runnable", vcpu::RUNSTATE_RUNNABLE),
        ("RUNSTATE_blocked", vcpu::RUNSTATE_BLOCKED),
        ("RUNSTATE_offline", vcpu::RUNSTATE_OFFLINE),
        ("VCPU_SSHOTTMR_future", vcpu::VCPU_SSHOTTMR_FUTURE),
        ("VCPU_HVM_MODE_32B", vcpu::VCPU_HVM_MODE_32B),
        ("VCPU_HVM_MODE_64B", vcpu::VCPU_HVM_MODE_64B),
        ("HVMOP_set_evtchn_upcall_vector", hvm::HVMOP_SET_EVTCHN_UPCALL_VECTOR),
        ("CONSOLEIO_read", hypercall::CONSOLEIO_READ),
        ("XENVER_version", version::XENVER_VERSION),
        ("XENVER_extraversion", version::XENVER_EXTRAVERSION),
        ("XENVER_compile_info", version::XENVER_COMPILE_INFO),
        ("XENVER_capabilities", version::XENVER_CAPABILITIES),
        ("XENVER_changeset", version::XENVER_CHANGESET),
        ("XENVER_platform_parameters", version::XENVER_PLATFORM_PARAMETERS),
        ("XENVER_get_features", version::XENVER_GET_FEATURES),
        ("XENVER_pagesize", version::XENVER_PAGESIZE),
        ("XENVER_guest_handle", version::XENVER_GUEST_HANDLE),
        ("XENVER_commandline", version::XENVER_COMMANDLINE),
        ("XENVER_build_id", version::XENVER_BUILD_ID),
        ("XENMEM_maximum_ram_page", memory::XENMEM_MAXIMUM_RAM_PAGE),
        ("XENMEM_current_reservation", memory::XENMEM_CURRENT_RESERVATION),
        ("XENMEM_maximum_reservation", memory::XENMEM_MAXIMUM_RESERVATION),
        ("XENMEM_add_to_physmap", memory::XENMEM_ADD_TO_PHYSMAP),
        ("XENMEM_memory_map", memory::XENMEM_MEMORY_MAP),
        ("XENMEM_set_memory_map", memory::XENMEM_SET_MEMORY_MAP),
        ("XENMAPSPACE_shared_info", memory::XENMAPSPACE_SHARED_INFO),
        ("XENMAPSPACE_grant_table", memory::XENMAPSPACE_GRANT_TABLE),
        ("XENMAPSPACE_gmfn", memory::XENMAPSPACE_GMFN),
        ("XENMAPSPACE_gmfn_range", memory::XENMAPSPACE_GMFN_RANGE),
        ("XENMAPSPACE_gmfn_foreign", memory::XENMAPSPACE_GMFN_FOREIGN),
        ("XENMAPSPACE_dev_mmio", memory::XENMAPSPACE_DEV_MMIO),
        ("HVMOP_set_param", hvm::HVMOP_SET_PARAM),
        ("HVMOP_get_param", hvm::HVMOP_GET_PARAM),
        ("HVMOP_set_evtchn_upcall_vector", hvm::HVMOP_SET_EVTCHN_UPCALL_VECTOR),
        ("HVM_PARAM_CALLBACK_IRQ", hvm::param::CALLBACK_IRQ),
        ("HVM_PARAM_STORE_PFN", hvm::param::STORE_PFN),
        ("HVM_PARAM_STORE_EVTCHN", hvm::param::STORE_EVTCHN),
        ("HVM_PARAM_CONSOLE_PFN", hvm::param::CONSOLE_PFN),
        ("HVM_PARAM_CONSOLE_EVTCHN", hvm::param::CONSOLE_EVTCHN),
        ("HVM_PARAM_VM86_TSS", hvm::param::VM86_TSS),
        ("HVM_PARAM_ACPI_IOPORTS_LOCATION", hvm::param::ACPI_IOPORTS_LOCATION),
        ("HVM_PARAM_VM_GENERATION_ID_ADDR", hvm::param::VM_GENERATION_ID_ADDR),
        ("HVM_PARAM_ALTP2M", hvm::param::ALTP2M),
        ("HVM_PARAM_X87_FIP_WIDTH", hvm::param::X87_FIP_WIDTH),
        ("HVM_PARAM_VM86_TSS_SIZED", hvm::param::VM86_TSS_SIZED),
        ("HVM_PARAM_MCA_CAP", hvm::param::MCA_CAP),
        ("HVM_NR_PARAMS", hvm::param::HVM_NR_PARAMS),
        ("SCHEDOP_yield", sched::SCHEDOP_YIELD),
        ("SCHEDOP_block", sched::SCHEDOP_BLOCK),
        ("SCHEDOP_shutdown", sched::SCHEDOP_SHUTDOWN),
        ("SCHEDOP_poll", sched::SCHEDOP_POLL),
        ("SCHEDOP_shutdown_code", sched::SCHEDOP_SHUTDOWN_CODE),
        ("SHUTDOWN_poweroff", sched::SHUTDOWN_POWEROFF),
        ("SHUTDOWN_reboot", sched::SHUTDOWN_REBOOT),
        ("SHUTDOWN_suspend", sched::SHUTDOWN_SUSPEND),
        ("SHUTDOWN_crash", sched::SHUTDOWN_CRASH),
        ("SHUTDOWN_watchdog", sched::SHUTDOWN_WATCHDOG),
        ("SHUTDOWN_soft_reset", sched::SHUTDOWN_SOFT_RESET),
        ("SHUTDOWN_MAX", sched::SHUTDOWN_MAX),
        ("VCPUOP_register_vcpu_info", vcpu::VCPUOP_REGISTER_VCPU_INFO),
        ("VCPUOP_register_runstate_memory_area", vcpu::VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA),
        ("VCPUOP_set_singleshot_timer", vcpu::VCPUOP_SET_SINGLESHOT_TIMER),
        ("VCPUOP_register_vcpu_time_memory_area", vcpu::VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA),
        ("XENFEAT_auto_translated_physmap", xen_abi::features::XENFEAT_AUTO_TRANSLATED_PHYSMAP),
        ("XENFEAT_hvm_callback_vector", xen_abi::features::XENFEAT_HVM_CALLBACK_VECTOR),
        ("XENFEAT_hvm_safe_pvclock", xen_abi::features::XENFEAT_HVM_SAFE_PVCLOCK),
        ("XENFEAT_memory_op_vnode_supported", xen_abi::features::XENFEAT_MEMORY_OP_VNODE_SUPPORTED),
        ("XENFEAT_not_direct_mapped", xen_abi::features::XENFEAT_NOT_DIRECT_MAPPED),
        ("XEN_ELFNOTE_PHYS32_ENTRY", xen_abi::elfnote::XEN_ELFNOTE_PHYS32_ENTRY),
        ("XEN_CPUID_FIRST_LEAF", xen_abi::cpuid::XEN_CPUID_FIRST_LEAF),
        ("XEN_CPUID_SIGNATURE_EBX", xen_abi::cpuid::XEN_CPUID_SIGNATURE_EBX),
        ("XEN_CPUID_SIGNATURE_ECX", xen_abi::cpuid::XEN_CPUID_SIGNATURE_ECX),
        ("XEN_CPUID_SIGNATURE_EDX", xen_abi::cpuid::XEN_CPUID_SIGNATURE_EDX),
        ("XEN_CPUID_MAX_NUM_LEAVES", xen_abi::cpuid::XEN_CPUID_MAX_NUM_LEAVES),
        ("XEN_HVM_CPUID_VCPU_ID_PRESENT", xen_abi::cpuid::XEN_HVM_CPUID_VCPU_ID_PRESENT),
        ("XEN_HVM_CPUID_DOMID_PRESENT", xen_abi::cpuid::XEN_HVM_CPUID_DOMID_PRESENT),
        ("XEN_HVM_CPUID_UPCALL_VECTOR", xen_abi::cpuid::XEN_HVM_CPUID_UPCALL_VECTOR),
        ("XEN_HVM_START_MAGIC_VALUE", xen_abi::start_info::XEN_HVM_START_MAGIC_VALUE),
        ("XEN_HVM_MEMMAP_TYPE_RAM", xen_abi::start_info::XEN_HVM_MEMMAP_TYPE_RAM),
        ("XEN_HVM_MEMMAP_TYPE_RESERVED", xen_abi::start_info::XEN_HVM_MEMMAP_TYPE_RESERVED),
        ("DOMID_SELF", u32::from(xen_abi::DOMID_SELF)),
    ] {
        c.eq(name, v as usize);
    }
    for e in ALL_ERRNOS {
        c.eq(&format!("XEN_{}", e.name()), *e as i32 as usize);
    }
}

fn checks_64() -> Checks {
    let mut c = Checks::new();
    common_checks(&mut c);
    blkif_checks!(c, x86_64);
    fields!(c, "struct arch_vcpu_info", si::ArchVcpuInfo64, [cr2, pad]);
    fields!(c, "struct vcpu_info", si::VcpuInfo64, [evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time]);
    fields!(
        c,
        "struct arch_shared_info",
        si::ArchSharedInfo64,
        [max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation]
    );
    fields!(
        c,
        "struct shared_info",
        si::SharedInfo64,
        [vcpu_info, evtchn_pending, evtchn_mask, wc_version, wc_sec, wc_nsec, wc_sec_hi, arch]
    );
    fields!(c, "struct xen_memory_map", memory::XenMemoryMap64, [nr_entries, buffer]);
    fields!(c, "struct xen_foreign_memory_map", memory::XenForeignMemoryMap64, [domid, map]);
    fields!(c, "struct xen_add_to_physmap", memory::XenAddToPhysmap64, [domid, size, space, idx, gpfn]);
    c.size("struct xen_platform_parameters", 8);
    fields!(c, "struct gnttab_setup_table", gt::GnttabSetupTable64, [dom, nr_frames, status, frame_list]);
    fields!(c, "struct sched_poll", sched::SchedPoll64, [ports, nr_ports, timeout]);
    fields!(c, "struct vcpu_runstate_info", vcpu::VcpuRunstateInfo64, [state, state_entry_time, time]);
    c.size("struct vcpu_set_singleshot_timer", 16);
    c
}

fn checks_32() -> Checks {
    let mut c = Checks::new();
    common_checks(&mut c);
    blkif_checks!(c, x86_32);
    fields!(c, "struct arch_vcpu_info", si::ArchVcpuInfo32, [cr2, pad]);
    fields!(c, "struct vcpu_info", si::VcpuInfo32, [evtchn_upcall_pending, evtchn_upcall_mask, evtchn_pending_sel, arch, time]);
    fields!(
        c,
        "struct arch_shared_info",
        si::ArchSharedInfo32,
        [max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation, wc_sec_hi]
    );
    fields!(c, "struct shared_info", si::SharedInfo32, [vcpu_info, evtchn_pending, evtchn_mask, wc_version, wc_sec, wc_nsec, arch]);
    fields!(c, "struct xen_memory_map", memory::XenMemoryMap32, [nr_entries, buffer]);
    fields!(c, "struct xen_foreign_memory_map", memory::XenForeignMemoryMap32, [domid, map]);
    fields!(c, "struct xen_add_to_physmap", memory::XenAddToPhysmap32, [domid, size, space, idx, gpfn]);
    c.size("struct xen_platform_parameters", 4);
    fields!(c, "struct gnttab_setup_table", gt::GnttabSetupTable32, [dom, nr_frames, status, frame_list]);
    fields!(c, "struct sched_poll", sched::SchedPoll32, [ports, nr_ports, timeout]);
    fields!(c, "struct vcpu_runstate_info", vcpu::VcpuRunstateInfo32, [state, state_entry_time, time]);
    c.size("struct vcpu_set_singleshot_timer", 12);
    c
}

const PRELUDE: &str = r#"
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/version.h>
#include <xen/memory.h>
#include <xen/features.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/hvm/hvm_vcpu.h>
#include <xen/elfnote.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/cpuid.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>
#include <xen/io/xenbus.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
"#;

fn compile(checks: &Checks, arch_flag: &str) {
    let header = Path::new("/usr/include/xen/xen.h");
    assert!(header.exists(), "Xen's public headers are missing: install Debian's libxen-dev (the README's test command does)");
    let dir = std::env::temp_dir().join(format!("xen-abi-layout-{}-{arch_flag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    std::fs::write(&src, format!("{PRELUDE}\n{}\n", checks.0)).unwrap();
    let out = Command::new("cc")
        .args([arch_flag, "-ffreestanding", "-fsyntax-only", "-D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__"])
        .arg(&src)
        .output()
        .expect("run cc");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "layout differs from Xen's headers ({arch_flag}):\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn test_x86_64_layouts_match_xen_headers() {
    compile(&checks_64(), "-m64");
}

#[test]
fn test_x86_32_layouts_match_xen_headers() {
    compile(&checks_32(), "-m32");
}

#[test]
fn test_a_wrong_layout_is_caught() {
    // The check itself must be able to fail.
    let mut c = Checks::new();
    c.off("struct vcpu_info", "time", 40);
    let src = std::env::temp_dir().join(format!("xen-abi-neg-{}.c", std::process::id()));
    std::fs::write(&src, format!("{PRELUDE}\n{}\n", c.0)).unwrap();
    let out = Command::new("cc").args(["-m64", "-ffreestanding", "-fsyntax-only"]).arg(&src).output().unwrap();
    let _ = std::fs::remove_file(&src);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not 40"));
}
