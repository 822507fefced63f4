//! Finding where to show an image: connectors, the CRTC and primary plane
//! that drive one, the mode, and the atomic property ids, looked up once.

use std::collections::HashMap;
use std::fmt;

use drm::control::{self, connector, crtc, plane, property, Device as _, Mode, PlaneType, ResourceHandle};

use super::{os, select, Kms};
use crate::{Result, SysError};

/// A connector as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// `Virtual-1`, `VGA-1`, `HDMI-A-2`, …
    pub name: String,
    /// A display is attached.
    pub connected: bool,
    /// Number of modes offered.
    pub modes: usize,
    /// The preferred mode's width × height, if one is marked.
    pub preferred: Option<(u32, u32)>,
}

impl fmt::Display for ConnectorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.connected { "connected" } else { "disconnected" };
        write!(f, "{} ({state}, {} modes", self.name, self.modes)?;
        match self.preferred {
            Some((w, h)) => write!(f, ", preferred {w}x{h})"),
            None => write!(f, ")"),
        }
    }
}

fn connector_info(c: &connector::Info) -> ConnectorInfo {
    let preferred = c
        .modes()
        .iter()
        .find(|m| m.mode_type().contains(control::ModeTypeFlags::PREFERRED));
    ConnectorInfo {
        name: select::connector_name(c.interface().as_str(), c.interface_id()),
        connected: c.state() == connector::State::Connected,
        modes: c.modes().len(),
        preferred: preferred.map(mode_size),
    }
}

fn mode_size(m: &Mode) -> (u32, u32) {
    (u32::from(m.size().0), u32::from(m.size().1))
}

/// Property ids of the atomic objects of an [`Output`], looked up once.
#[derive(Debug, Clone)]
pub(super) struct AtomicProps {
    pub(super) conn_crtc_id: property::Handle,
    pub(super) mode_id: property::Handle,
    pub(super) active: property::Handle,
    pub(super) fb_id: property::Handle,
    pub(super) crtc_id: property::Handle,
    pub(super) src: [property::Handle; 4],
    pub(super) dst: [property::Handle; 4],
    pub(super) damage_clips: Option<property::Handle>,
}

/// Where an image is shown: a connector, the CRTC driving it, its primary
/// plane and the mode, from [`Kms::find_output`].
#[derive(Debug, Clone)]
pub struct Output {
    pub(super) name: String,
    pub(super) connector: connector::Handle,
    pub(super) crtc: crtc::Handle,
    pub(super) plane: Option<plane::Handle>,
    pub(super) formats: Vec<u32>,
    pub(super) mode: Mode,
    pub(super) props: Option<AtomicProps>,
}

impl Output {
    /// The connector's name (`Virtual-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mode's width × height.
    pub fn mode_size(&self) -> (u32, u32) {
        mode_size(&self.mode)
    }

    /// The mode's refresh rate in Hz.
    pub fn refresh(&self) -> u32 {
        self.mode.vrefresh()
    }

    /// Connector, CRTC and primary plane ids (the plane where the driver
    /// lists planes).
    pub fn ids(&self) -> (u32, u32, Option<u32>) {
        (self.connector.into(), self.crtc.into(), self.plane.map(Into::into))
    }

    /// The primary plane takes `FB_DAMAGE_CLIPS` (atomic only).
    pub fn has_damage_clips(&self) -> bool {
        self.props.as_ref().is_some_and(|p| p.damage_clips.is_some())
    }

    /// The formats the primary plane takes (empty when unknown).
    pub fn formats(&self) -> &[u32] {
        &self.formats
    }

    /// The fourcc to add an image of `fourcc` as a framebuffer with:
    /// `fourcc` itself if the plane takes it, else its opaque twin (the
    /// same bytes, alpha ignored: ARGB8888 as XRGB8888 on virtio-gpu), else
    /// an error naming what the plane takes.
    pub fn scanout_format(&self, fourcc: u32) -> Result<u32> {
        if self.formats.is_empty() || self.formats.contains(&fourcc) {
            return Ok(fourcc);
        }
        match select::opaque_twin(fourcc) {
            Some(twin) if self.formats.contains(&twin) => Ok(twin),
            _ => Err(SysError::Invalid(format!(
                "the primary plane of {} cannot show {}: it takes {}",
                self.name,
                select::fourcc_name(fourcc),
                self.formats
                    .iter()
                    .map(|&f| select::fourcc_name(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl Kms {
    fn connector_infos(&self, probe: bool) -> Result<(control::ResourceHandles, Vec<connector::Info>)> {
        let res = self
            .device
            .resource_handles()
            .map_err(|e| os("DRM_IOCTL_MODE_GETRESOURCES", e))?;
        let infos = res
            .connectors()
            .iter()
            .map(|&c| {
                self.device
                    .get_connector(c, probe)
                    .map_err(|e| os("DRM_IOCTL_MODE_GETCONNECTOR", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((res, infos))
    }

    /// The connectors, as last probed by the kernel (no forced probe).
    pub fn connectors(&self) -> Result<Vec<ConnectorInfo>> {
        Ok(self.connector_infos(false)?.1.iter().map(connector_info).collect())
    }

    /// The output to show a `width` × `height` image on: connector `want`
    /// (by name, case-insensitive), or with `None` the first connected one
    /// (connectors are probed, which needs master to be fresh); a CRTC its
    /// encoders can drive (the one driving it now, else a free one); its
    /// primary plane; and the mode chosen for the image's size:
    ///
    /// 1. a mode of exactly the image's size;
    /// 2. else the preferred mode if it fits inside the image;
    /// 3. else the largest mode that fits inside the image;
    /// 4. else the smallest mode.
    ///
    /// The image is shown unscaled at 0,0. An image larger than the mode
    /// shows its top-left mode-sized part. An image smaller than the mode
    /// covers only part of it: atomic drivers whose primary plane may be
    /// smaller than the CRTC accept that; bochs-drm and virtio-gpu (their
    /// primary planes must cover the mode) and legacy `SETCRTC` (the
    /// framebuffer must cover the mode) refuse it in [`Kms::show`].
    pub fn find_output(&self, want: Option<&str>, width: u32, height: u32) -> Result<Output> {
        let (res, infos) = self.connector_infos(true)?;
        let listing = || {
            infos
                .iter()
                .map(|c| connector_info(c).to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let path = self.device.path().display();
        let con = match want {
            Some(name) => infos.iter().find(|c| connector_info(c).name.eq_ignore_ascii_case(name)),
            None => infos.iter().find(|c| c.state() == connector::State::Connected),
        };
        let con = con.ok_or_else(|| {
            SysError::Invalid(match want {
                Some(name) => format!("{path} has no connector {name}; connectors: {}", listing()),
                None => format!("{path} has no connected connector; connectors: {}", listing()),
            })
        })?;
        let name = connector_info(con).name;
        if con.state() != connector::State::Connected {
            return Err(SysError::Invalid(format!(
                "{name} of {path} is not connected; connectors: {}",
                listing()
            )));
        }
        let sizes: Vec<(u32, u32, bool)> = con
            .modes()
            .iter()
            .map(|m| {
                let (w, h) = mode_size(m);
                (w, h, m.mode_type().contains(control::ModeTypeFlags::PREFERRED))
            })
            .collect();
        let mode = select::choose_mode(&sizes, width, height)
            .map(|i| con.modes()[i])
            .ok_or_else(|| SysError::Invalid(format!("{name} of {path} offers no modes")))?;
        let crtc = self.pick_crtc(&res, con, &name)?;
        let (plane, formats) = self.primary_plane(&res, crtc)?.unzip();
        let props = match (self.atomic, plane) {
            (true, Some(plane)) => Some(self.atomic_props(con.handle(), crtc, plane)?),
            (true, None) => {
                return Err(SysError::Invalid(format!(
                    "{path}: no primary plane can drive CRTC {}",
                    u32::from(crtc)
                )))
            }
            (false, _) => None,
        };
        Ok(Output {
            name,
            connector: con.handle(),
            crtc,
            plane,
            formats: formats.unwrap_or_default(),
            mode,
            props,
        })
    }

    fn pick_crtc(&self, res: &control::ResourceHandles, con: &connector::Info, name: &str) -> Result<crtc::Handle> {
        let encoder = |e| {
            self.device
                .get_encoder(e)
                .map_err(|e| os("DRM_IOCTL_MODE_GETENCODER", e))
        };
        if let Some(current) = con.current_encoder() {
            if let Some(c) = encoder(current)?.crtc() {
                return Ok(c);
            }
        }
        let mut possible = Vec::new();
        for &e in con.encoders() {
            possible.extend(res.filter_crtcs(encoder(e)?.possible_crtcs()));
        }
        let free = possible
            .iter()
            .copied()
            .find(|&c| self.device.get_crtc(c).is_ok_and(|i| i.mode().is_none()));
        free.or(possible.first().copied())
            .ok_or_else(|| SysError::Invalid(format!("no CRTC can drive {name} of {}", self.device.path().display())))
    }

    /// The primary plane of `crtc` and its formats; `None` where the device
    /// lists no planes (legacy drivers without universal planes).
    fn primary_plane(
        &self,
        res: &control::ResourceHandles,
        crtc: crtc::Handle,
    ) -> Result<Option<(plane::Handle, Vec<u32>)>> {
        let Ok(planes) = self.device.plane_handles() else {
            return Ok(None);
        };
        for p in planes {
            let info = self.device.get_plane(p).map_err(|e| os("DRM_IOCTL_MODE_GETPLANE", e))?;
            if !res.filter_crtcs(info.possible_crtcs()).contains(&crtc) {
                continue;
            }
            let props = self
                .device
                .get_properties(p)
                .map_err(|e| os("DRM_IOCTL_MODE_OBJ_GETPROPERTIES", e))?;
            let primary = props.iter().any(|(&id, &value)| {
                self.device
                    .get_property(id)
                    .is_ok_and(|i| i.name().to_bytes() == b"type")
                    && value == PlaneType::Primary as u64
            });
            if primary {
                return Ok(Some((p, info.formats().to_vec())));
            }
        }
        Ok(None)
    }

    /// Property ids of object `h` by name.
    fn prop_map<H: ResourceHandle>(&self, h: H) -> Result<HashMap<String, property::Handle>> {
        let props = self
            .device
            .get_properties(h)
            .map_err(|e| os("DRM_IOCTL_MODE_OBJ_GETPROPERTIES", e))?;
        let map = props
            .as_hashmap(&*self.device)
            .map_err(|e| os("DRM_IOCTL_MODE_GETPROPERTY", e))?;
        Ok(map.into_iter().map(|(name, info)| (name, info.handle())).collect())
    }

    fn atomic_props(&self, con: connector::Handle, crtc: crtc::Handle, plane: plane::Handle) -> Result<AtomicProps> {
        let (c, k, p) = (self.prop_map(con)?, self.prop_map(crtc)?, self.prop_map(plane)?);
        let need = |map: &HashMap<String, property::Handle>, what: &str, name: &str| {
            map.get(name)
                .copied()
                .ok_or_else(|| SysError::Invalid(format!("{what} has no atomic property {name}")))
        };
        let plane_prop = |name| need(&p, "the primary plane", name);
        Ok(AtomicProps {
            conn_crtc_id: need(&c, "the connector", "CRTC_ID")?,
            mode_id: need(&k, "the CRTC", "MODE_ID")?,
            active: need(&k, "the CRTC", "ACTIVE")?,
            fb_id: plane_prop("FB_ID")?,
            crtc_id: plane_prop("CRTC_ID")?,
            src: [
                plane_prop("SRC_X")?,
                plane_prop("SRC_Y")?,
                plane_prop("SRC_W")?,
                plane_prop("SRC_H")?,
            ],
            dst: [
                plane_prop("CRTC_X")?,
                plane_prop("CRTC_Y")?,
                plane_prop("CRTC_W")?,
                plane_prop("CRTC_H")?,
            ],
            damage_clips: p.get("FB_DAMAGE_CLIPS").copied(),
        })
    }
}
